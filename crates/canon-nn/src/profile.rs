//! Wall-clock time of a training step by phase (`canon finetune --timings`).
//!
//! Off by default; when on, the training ops add the time they run (forward and backward) to a
//! process-wide counter per phase. Ops run on the calling thread and parallelise inside, so a
//! phase's time is the wall-clock time of its calls. Phases do not nest, except `Dequantize`,
//! a part of the two input-gradient phases shown under them; the step's time less the sum of the
//! phases is what the other ops (candle's element-wise ops, the gradient store, copies) took.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A part of the training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The frozen base products of the adapted linears, forward (`x Wᵀ`).
    BaseForward,
    /// The frozen base's input gradient in the backward (`g W`, quantized weights dequantized).
    BaseInputGrad,
    /// The adapters' products, forward (`s·(x Aᵀ) Bᵀ`).
    AdapterForward,
    /// The adapters' products in the backward (`g B`, `∂L/∂x` share, `∂L/∂A`, `∂L/∂B`).
    AdapterBackward,
    /// Of the two input-gradient phases: dequantizing the weight's row tiles (nested in them).
    Dequantize,
    /// Trainable linears' products (`x Wᵀ`), forward.
    TrainForward,
    /// Trainable linears' products in the backward (`g W` and `gᵀ x`).
    TrainBackward,
    /// Other frozen linears (the output head), forward.
    FrozenForward,
    /// Other frozen linears (the output head), input gradient.
    FrozenInputGrad,
    /// Attention (the tiled op), forward.
    AttentionForward,
    /// Attention, backward.
    AttentionBackward,
    /// RMS / layer norms, forward and backward.
    Norms,
    /// SwiGLU's `SiLU(a)·b` (and GELU), forward and backward.
    Activations,
    /// RoPE, forward and backward.
    Rope,
    /// The cross-entropy's log-sum-exp over the vocabulary, forward and backward.
    CrossEntropy,
    /// The whole forward pass (the batch's loss).
    StepForward,
    /// The whole backward pass (gradients of the trainable parameters).
    StepBackward,
    /// Gradient clipping and the optimizer update.
    Optimizer,
}

const PHASES: [Phase; N] = [
    Phase::BaseForward,
    Phase::BaseInputGrad,
    Phase::Dequantize,
    Phase::AdapterForward,
    Phase::AdapterBackward,
    Phase::TrainForward,
    Phase::TrainBackward,
    Phase::FrozenForward,
    Phase::FrozenInputGrad,
    Phase::AttentionForward,
    Phase::AttentionBackward,
    Phase::Norms,
    Phase::Activations,
    Phase::Rope,
    Phase::CrossEntropy,
    Phase::StepForward,
    Phase::StepBackward,
    Phase::Optimizer,
];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::BaseForward => "base products, forward",
            Phase::BaseInputGrad => "base input gradients (g W)",
            Phase::AdapterForward => "adapter products, forward",
            Phase::AdapterBackward => "adapter products, backward",
            Phase::Dequantize => "  of which dequantizing row tiles",
            Phase::TrainForward => "trainable products, forward",
            Phase::TrainBackward => "trainable products, backward",
            Phase::FrozenForward => "output head, forward",
            Phase::FrozenInputGrad => "output head, input gradient",
            Phase::AttentionForward => "attention, forward",
            Phase::AttentionBackward => "attention, backward",
            Phase::Norms => "norms (fwd + bwd)",
            Phase::Activations => "SiLU·mul (fwd + bwd)",
            Phase::Rope => "RoPE (fwd + bwd)",
            Phase::CrossEntropy => "cross-entropy log-sum-exp (fwd + bwd)",
            Phase::StepForward => "forward pass (total)",
            Phase::StepBackward => "backward pass (total)",
            Phase::Optimizer => "clip + AdamW",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static ON: AtomicBool = AtomicBool::new(false);
const N: usize = 18;
static NANOS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static CALLS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

/// Turns the counters on or off (process-wide).
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Sets every counter to zero.
pub fn reset() {
    for (n, c) in NANOS.iter().zip(&CALLS) {
        n.store(0, Ordering::Relaxed);
        c.store(0, Ordering::Relaxed);
    }
}

/// Times a phase until dropped (nothing when the counters are off).
pub struct Scope(Option<(Phase, Instant)>);

/// Starts timing `phase`.
pub fn scope(phase: Phase) -> Scope {
    Scope(enabled().then(|| (phase, Instant::now())))
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((p, t0)) = self.0.take() {
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            NANOS[p.index()].fetch_add(ns, Ordering::Relaxed);
            CALLS[p.index()].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One phase's totals.
#[derive(Debug, Clone, Copy)]
pub struct PhaseTime {
    pub phase: Phase,
    pub seconds: f64,
    pub calls: u64,
}

/// The counters so far, in the order of `Phase`.
pub fn snapshot() -> Vec<PhaseTime> {
    PHASES
        .iter()
        .map(|&p| PhaseTime {
            phase: p,
            seconds: NANOS[p.index()].load(Ordering::Relaxed) as f64 * 1e-9,
            calls: CALLS[p.index()].load(Ordering::Relaxed),
        })
        .collect()
}

/// The table `canon finetune --timings` prints: per phase, seconds per step and the share of the
/// step; the ops' phases, then what the step's passes spent outside them.
pub fn table(steps: u64) -> String {
    let s = snapshot();
    let get = |p: Phase| s.iter().find(|t| t.phase == p).map_or(0.0, |t| t.seconds);
    let steps = steps.max(1) as f64;
    let total = get(Phase::StepForward) + get(Phase::StepBackward) + get(Phase::Optimizer);
    let mut out = format!(
        "{:<40} {:>9} {:>7} {:>8}\n",
        "phase", "s/step", "share", "calls"
    );
    let mut row = |name: &str, sec: f64, calls: Option<u64>| {
        let share = if total > 0.0 {
            100.0 * sec / total
        } else {
            0.0
        };
        let calls = calls.map_or(String::new(), |c| format!("{:.0}", c as f64 / steps));
        out.push_str(&format!(
            "{name:<40} {:>9.4} {:>6.1}% {calls:>8}\n",
            sec / steps,
            share
        ));
    };
    let mut in_ops = 0.0;
    for t in &s {
        if matches!(
            t.phase,
            Phase::StepForward | Phase::StepBackward | Phase::Optimizer
        ) {
            continue;
        }
        if t.phase != Phase::Dequantize {
            in_ops += t.seconds;
        }
        row(t.phase.name(), t.seconds, Some(t.calls));
    }
    row(
        "other ops (element-wise, copies, autograd)",
        (total - in_ops - get(Phase::Optimizer)).max(0.0),
        None,
    );
    row(Phase::Optimizer.name(), get(Phase::Optimizer), None);
    row(Phase::StepForward.name(), get(Phase::StepForward), None);
    row(Phase::StepBackward.name(), get(Phase::StepBackward), None);
    row("step (forward + backward + update)", total, None);
    out
}

/// Whether `CANON_MEM_TRACE` is set (read once): [`mem_mark`] then prints the process's memory.
pub fn mem_trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CANON_MEM_TRACE").is_some_and(|v| !v.is_empty()))
}

/// The process's resident memory and its peak so far, in MiB (`VmRSS`, `VmHWM` of
/// `/proc/self/status`); `None` where that file is not there (outside Linux).
pub fn resident_mib() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_count_only_while_enabled() {
        // The counters are process-wide: this test is the only one that turns them on.
        reset();
        drop(scope(Phase::Rope));
        assert_eq!(snapshot()[Phase::Rope.index()].calls, 0);
        enable(true);
        {
            let _s = scope(Phase::Rope);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        enable(false);
        let t = snapshot()[Phase::Rope.index()];
        // (other tests running meanwhile may add RoPE calls of their own)
        assert!(t.calls >= 1, "{t:?}");
        assert!(t.seconds >= 0.002, "{t:?}");
        assert!(table(1).contains("RoPE"));
        reset();
    }
}

//! The step's forward passes and their rows' sampling. A pass feeds rows of several slots at
//! once: prompt chunks and decoding slots' next tokens. Several slots share a pass only where the
//! model's rows do not depend on their batch (`rows_independent`) or, for decode rows, in groups
//! the kernels keep row-independent (`GEMM_ROWS_MAX`), so each slot's logits are bit for bit
//! those of its own pass.

use super::*;

/// What one slot feeds to a pass.
#[derive(Clone, Copy)]
pub(super) enum Feed {
    /// Prompt positions `next..end`; the prompt's last chunk gives its first token.
    Prompt { next: usize, end: usize },
    /// The decode step's token.
    Token(u32),
}

impl Worker {
    /// The decode step's feed of each decoding slot in `slots` (increasing).
    pub(super) fn decode_feeds(&self, slots: &[usize]) -> Vec<(usize, Feed)> {
        slots
            .iter()
            .filter_map(|&i| match &self.slots[i].active {
                Some(Active {
                    phase: Phase::Decode { feed },
                    ..
                }) => Some((i, Feed::Token(*feed))),
                _ => None,
            })
            .collect()
    }

    /// One forward pass over `rows` (slot, feed), in increasing slot order: every row's tokens
    /// appended to its slot's cache, then the sampling of each decode row and of each prompt
    /// row whose last chunk this was. A pass with decode rows counts as a decode pass (its time
    /// under `forward_ns`), one of prompt chunks alone as prefill.
    pub(super) fn pass(&mut self, rows: &[(usize, Feed)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let chunks: Vec<Vec<u32>> = rows
            .iter()
            .map(|&(i, feed)| match (feed, &self.slots[i].active) {
                (Feed::Prompt { next, end }, Some(a)) => a.req.prompt_ids[next..end].to_vec(),
                (Feed::Token(t), _) => vec![t],
                (Feed::Prompt { .. }, None) => Vec::new(),
            })
            .collect();
        let ids: Vec<&[u32]> = chunks.iter().map(|c| c.as_slice()).collect();
        let t0 = Instant::now();
        let logits = {
            let mut caches = slot_caches(&mut self.slots, rows.iter().map(|r| r.0));
            self.lm.forward_batch(&ids, &mut caches)?
        };
        let decoding = rows
            .iter()
            .filter(|r| matches!(r.1, Feed::Token(_)))
            .count();
        let mut sample = Vec::with_capacity(rows.len());
        for (row, (&(i, feed), chunk)) in rows.iter().zip(&chunks).enumerate() {
            let slot = &mut self.slots[i];
            slot.ids.extend_from_slice(chunk);
            let end = match feed {
                Feed::Token(_) => {
                    sample.push((i, row));
                    continue;
                }
                Feed::Prompt { end, .. } => end,
            };
            self.t.prefill_chunks += 1;
            self.t.prefill_tokens += chunk.len() as u64;
            let Some(a) = slot.active.as_mut() else {
                continue;
            };
            if end < a.req.prompt_ids.len() {
                a.phase = Phase::Prefill { next: end };
                continue;
            }
            if let Ok(mut s) = self.shared.stats.lock() {
                s.prompt_tokens += a.req.prompt_ids.len() as u64;
                s.cached_prompt_tokens += a.cached as u64;
            }
            sample.push((i, row));
        }
        if decoding > 0 {
            self.t.forward_ns += ns_since(t0);
            self.t.decode_passes += 1;
            self.t.decode_rows += decoding as u64;
        } else {
            self.t.prefill_ns += ns_since(t0);
        }
        if sample.is_empty() {
            return Ok(());
        }
        // The rows are read where the forward pass wrote them (no copy of `[rows, vocabulary]`).
        let vocab = logits.dim(1)?;
        with_f32_data(&logits, |flat| {
            self.after_rows(
                sample
                    .iter()
                    .map(|&(i, row)| (i, &flat[row * vocab..(row + 1) * vocab]))
                    .collect(),
            )
        })?
    }
}

/// The caches of slots `idx` (increasing indices), borrowed together.
fn slot_caches(slots: &mut [Slot], idx: impl Iterator<Item = usize>) -> Vec<&mut Cache> {
    let mut caches = Vec::new();
    let mut rest = slots;
    let mut base = 0;
    for i in idx {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
        let (one, tail) = tail.split_at_mut(1);
        caches.push(&mut one[0].cache);
        rest = tail;
        base = i + 1;
    }
    caches
}

/// `f(values)` of an f32 tensor's elements in order: the CPU storage read in place when the
/// tensor is contiguous there, a copy otherwise.
fn with_f32_data<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (guard, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((start, end))) =
            (&*guard, layout.contiguous_offsets())
            && let Some(data) = v.get(start..end)
        {
            return Ok(f(data));
        }
    }
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&v))
}

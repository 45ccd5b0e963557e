//! The step's forward passes: prompt chunks (several in one pass where the model's rows do not
//! depend on their batch) and the decoding rows, each followed by its rows' sampling.

use super::*;

impl Worker {
    /// Feeds the prompt chunks `picks` (slot, first position, end) in one forward pass; a
    /// prompt's last chunk gives its first token. Several chunks share a pass only where the
    /// model's rows are independent of their batch (`rows_independent`), so each prompt's logits
    /// are bit for bit those of its own pass.
    pub(super) fn prefill_group(&mut self, picks: &[(usize, usize, usize)]) -> Result<()> {
        if picks.is_empty() {
            return Ok(());
        }
        let chunks: Vec<Vec<u32>> = picks
            .iter()
            .map(|&(i, next, end)| match &self.slots[i].active {
                Some(a) => a.req.prompt_ids[next..end].to_vec(),
                None => Vec::new(),
            })
            .collect();
        let ids: Vec<&[u32]> = chunks.iter().map(|c| c.as_slice()).collect();
        let t0 = Instant::now();
        let logits = {
            let mut caches = slot_caches(&mut self.slots, picks.iter().map(|p| p.0));
            self.lm.forward_batch(&ids, &mut caches)?
        };
        let mut done = Vec::new();
        for (row, (&(i, _, end), chunk)) in picks.iter().zip(&chunks).enumerate() {
            self.t.prefill_chunks += 1;
            self.t.prefill_tokens += chunk.len() as u64;
            let slot = &mut self.slots[i];
            slot.ids.extend_from_slice(chunk);
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
            done.push((i, row));
        }
        self.t.prefill_ns += ns_since(t0);
        if done.is_empty() {
            return Ok(());
        }
        let vocab = logits.dim(1)?;
        with_f32_data(&logits, |flat| {
            self.after_rows(
                done.iter()
                    .map(|&(i, row)| (i, &flat[row * vocab..(row + 1) * vocab]))
                    .collect(),
            )
        })?
    }

    pub(super) fn decode_group(&mut self, group: &[usize]) -> Result<()> {
        let feeds: Vec<[u32; 1]> = group
            .iter()
            .map(|&i| match &self.slots[i].active {
                Some(Active {
                    phase: Phase::Decode { feed },
                    ..
                }) => [*feed],
                _ => [0],
            })
            .collect();
        let ids: Vec<&[u32]> = feeds.iter().map(|f| f.as_slice()).collect();
        let t0 = Instant::now();
        let logits = {
            let mut caches = slot_caches(&mut self.slots, group.iter().copied());
            self.lm.forward_batch(&ids, &mut caches)?
        };
        self.t.forward_ns += ns_since(t0);
        self.t.decode_passes += 1;
        self.t.decode_rows += group.len() as u64;
        for (&i, feed) in group.iter().zip(&feeds) {
            self.slots[i].ids.push(feed[0]);
        }
        // The rows are read where the forward pass wrote them (no copy of `[rows, vocabulary]`).
        let vocab = logits.dim(1)?;
        with_f32_data(&logits, |flat| {
            self.after_rows(
                group
                    .iter()
                    .copied()
                    .zip(flat.chunks_exact(vocab))
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

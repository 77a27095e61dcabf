//! Randomness as a parameter: jitter and key material are drawn through `Rng`, so a backoff
//! schedule can be pinned to the millisecond in tests and production draws from `getrandom`.

pub trait Rng {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// A float in `[0, 1)`, with 53 bits of randomness.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Replays a script of `unit()` values (as `u64`s scaled over the full range), then repeats it.
/// For tests: `ScriptedRng::units(&[0.5, 0.0])` makes the next draws 0.5, then 0.0, then 0.5 ...
#[derive(Debug, Clone)]
pub struct ScriptedRng {
    script: Vec<u64>,
    at: usize,
}

impl ScriptedRng {
    pub fn units(values: &[f64]) -> Self {
        let script =
            values.iter().map(|v| ((v.clamp(0.0, 1.0 - f64::EPSILON) * (1u64 << 53) as f64) as u64) << 11).collect();
        ScriptedRng { script, at: 0 }
    }
}

impl Rng for ScriptedRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn next_u64(&mut self) -> u64 {
        if self.script.is_empty() {
            return 0;
        }
        let v = self.script[self.at % self.script.len()];
        self.at += 1;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_units_come_back_exactly() {
        let mut r = ScriptedRng::units(&[0.5, 0.25, 0.0]);
        assert_eq!(r.unit(), 0.5);
        assert_eq!(r.unit(), 0.25);
        assert_eq!(r.unit(), 0.0);
        assert_eq!(r.unit(), 0.5);
    }
}

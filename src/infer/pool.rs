//! Pooling per-position hidden states into one vector per record, streamed chunk by chunk.

use crate::{Error, Result};

/// How to pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Mean over positions.
    Mean,
    /// Element-wise maximum over positions.
    Max,
    /// The last position's hidden state (the causal summary of the whole record).
    Last,
}

impl std::str::FromStr for Pool {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Pool::Mean),
            "max" => Ok(Pool::Max),
            "last" => Ok(Pool::Last),
            _ => Err(Error::usage(
                format!("unknown pooling '{s}'"),
                "use --pool mean, max, last or none",
            )),
        }
    }
}

/// Running pooled value for one record.
#[derive(Debug, Clone)]
pub struct Pooler {
    pool: Pool,
    acc: Vec<f64>,
    count: usize,
}

impl Pooler {
    /// An empty accumulator of width `d`.
    pub fn new(pool: Pool, d: usize) -> Self {
        let init = match pool {
            Pool::Max => f64::NEG_INFINITY,
            _ => 0.0,
        };
        Pooler {
            pool,
            acc: vec![init; d],
            count: 0,
        }
    }

    /// Adds one position's hidden state.
    pub fn push(&mut self, h: &[f32]) {
        match self.pool {
            Pool::Mean => self
                .acc
                .iter_mut()
                .zip(h)
                .for_each(|(a, &x)| *a += x as f64),
            Pool::Max => self
                .acc
                .iter_mut()
                .zip(h)
                .for_each(|(a, &x)| *a = a.max(x as f64)),
            Pool::Last => self.acc.iter_mut().zip(h).for_each(|(a, &x)| *a = x as f64),
        }
        self.count += 1;
    }

    /// Adds consecutive hidden states stored row-major, `d` values each.
    pub fn push_rows(&mut self, rows: &[f32], d: usize) {
        rows.chunks_exact(d).for_each(|h| self.push(h));
    }

    /// Positions seen.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The pooled vector (`None` for a record with no positions).
    pub fn finish(&self) -> Option<Vec<f32>> {
        if self.count == 0 {
            return None;
        }
        Some(match self.pool {
            Pool::Mean => self
                .acc
                .iter()
                .map(|a| (*a / self.count as f64) as f32)
                .collect(),
            _ => self.acc.iter().map(|a| *a as f32).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools() {
        let rows = [[1.0f32, -2.0], [3.0, 0.0], [2.0, -5.0]];
        let run = |p| {
            let mut x = Pooler::new(p, 2);
            rows.iter().for_each(|r| x.push(r));
            x.finish().unwrap()
        };
        assert_eq!(run(Pool::Mean), vec![2.0, -7.0 / 3.0]);
        assert_eq!(run(Pool::Max), vec![3.0, 0.0]);
        assert_eq!(run(Pool::Last), vec![2.0, -5.0]);
        assert!(Pooler::new(Pool::Mean, 2).finish().is_none());
    }
}

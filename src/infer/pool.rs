//! Pooling per-position hidden states into one vector per record, streamed chunk by chunk.
//!
//! Chunks can be pooled on the host ([`Pooler::push_rows`]) or where they were computed
//! ([`Pooler::push_tensor`]): on a GPU each chunk is then reduced to one row on the device and
//! only that row is copied back, every [`FLUSH_EVERY`] chunks, so a chromosome's hidden states
//! never cross to the host and the host does not wait on the device after every chunk.

use burn::tensor::Tensor;

use crate::model::weights::host_values;
use crate::{Error, Result};

/// Chunks pooled on the device between two copies of the running value to the host (each
/// copy waits for the device; the f64 running value on the host keeps long sums exact).
pub const FLUSH_EVERY: usize = 64;

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
    /// Chunks pooled on the device and not yet folded into `acc`: `[1, d]`.
    pending: Option<Tensor<2>>,
    pending_chunks: usize,
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
            pending: None,
            pending_chunks: 0,
        }
    }

    /// Adds one position's hidden state.
    pub fn push(&mut self, h: &[f32]) {
        self.flush();
        self.fold(h);
        self.count += 1;
    }

    /// Folds one row (a hidden state, or a chunk's pooled row) into the running value.
    fn fold(&mut self, h: &[f32]) {
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
                // A NaN stays (f64::max would drop it and hide a broken model).
                .for_each(|(a, &x)| {
                    *a = if x.is_nan() || a.is_nan() {
                        f64::NAN
                    } else {
                        a.max(x as f64)
                    }
                }),
            Pool::Last => self.acc.iter_mut().zip(h).for_each(|(a, &x)| *a = x as f64),
        }
    }

    /// Adds consecutive hidden states held as a tensor `[positions, d]` on any device: the
    /// chunk is pooled there (sum, maximum or last row) and the result joins the running
    /// value on the host every [`FLUSH_EVERY`] chunks.
    pub fn push_tensor(&mut self, h: Tensor<2>) {
        let [len, d] = h.dims();
        if len == 0 {
            return;
        }
        let part = match self.pool {
            Pool::Mean => reduce_rows(h, group_rows(), &|t, dim| t.sum_dim(dim), &|a, b| a + b),
            Pool::Max => reduce_rows(h, group_rows(), &|t, dim| t.max_dim(dim), &|a, b| {
                a.max_pair(b)
            }),
            Pool::Last => h.slice([len - 1..len, 0..d]),
        };
        self.pending = Some(match (self.pending.take(), self.pool) {
            (None, _) | (Some(_), Pool::Last) => part,
            (Some(p), Pool::Mean) => p + part,
            (Some(p), Pool::Max) => p.max_pair(part),
        });
        self.count += len;
        self.pending_chunks += 1;
        if self.pending_chunks >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// Folds the device's pending value into the host's.
    fn flush(&mut self) {
        self.pending_chunks = 0;
        if let Some(p) = self.pending.take() {
            let row = host_values(p);
            self.fold(&row);
        }
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
    pub fn finish(&mut self) -> Option<Vec<f32>> {
        self.flush();
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

/// Rows per group when rows are reduced in groups side by side, unless
/// `GENOMAMBA_POOL_GROUP_ROWS` says otherwise (2 or more; for comparisons).
const GROUP_ROWS: usize = 64;

fn group_rows() -> usize {
    std::env::var("GENOMAMBA_POOL_GROUP_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v: &usize| v >= 2)
        .unwrap_or(GROUP_ROWS)
}

/// Reduces the rows of `h` (`[len, d]`) to one (`[1, d]`) in levels: groups of `group_rows`
/// consecutive rows reduced side by side to one row each, then those rows the same way, until
/// one group is left; the rows after the last whole group are reduced on their own. (A
/// reduction over the row axis runs on a GPU as one loop per column, or per column and group:
/// 256 columns of a 262,144-row chunk reduced in 64 groups took 483 us on an H200, few threads
/// each walking 4,096 rows; in groups of 64 rows every level has thousands of threads and short
/// loops.)
fn reduce_rows(
    h: Tensor<2>,
    group_rows: usize,
    reduce: &impl Fn(Tensor<3>, usize) -> Tensor<3>,
    combine: &impl Fn(Tensor<2>, Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    let [len, d] = h.dims();
    let groups = len / group_rows;
    let whole = groups * group_rows;
    let one = |t: Tensor<2>| -> Tensor<2> {
        let [n, d] = t.dims();
        reduce(t.reshape([1, n, d]), 1).reshape([1, d])
    };
    if groups < 2 {
        return one(h);
    }
    let rows = reduce(
        h.clone()
            .slice([0..whole, 0..d])
            .reshape([groups, group_rows, d]),
        1,
    )
    .reshape([groups, d]);
    let main = reduce_rows(rows, group_rows, reduce, combine);
    if whole < len {
        combine(main, one(h.slice([whole..len, 0..d])))
    } else {
        main
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

    #[test]
    fn tensor_chunks_pool_like_rows() {
        let device = burn::tensor::Device::flex();
        let d = 3;
        // Chunk lengths around the row grouping: fewer rows than a group, whole groups, whole
        // groups plus a remainder, three levels of groups with remainders at two; more chunks
        // than are pooled between copies to the host.
        for lens in [
            vec![1, 5],
            vec![128, 64],
            vec![200, 7, 1000],
            vec![3; 150],
            vec![64 * 64 * 3 + 64 * 5 + 9],
        ] {
            let total: usize = lens.iter().sum();
            let rows: Vec<f32> = (0..total * d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            for pool in [Pool::Mean, Pool::Max, Pool::Last] {
                let mut host = Pooler::new(pool, d);
                host.push_rows(&rows, d);
                let mut dev = Pooler::new(pool, d);
                let mut at = 0;
                for &n in &lens {
                    let part = rows[at * d..(at + n) * d].to_vec();
                    dev.push_tensor(Tensor::from_data(
                        burn::tensor::TensorData::new(part, [n, d]),
                        &device,
                    ));
                    at += n;
                }
                let (a, b) = (host.finish().unwrap(), dev.finish().unwrap());
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                        "{pool:?} {lens:?}: {a:?} vs {b:?}"
                    );
                }
            }
        }
    }
}

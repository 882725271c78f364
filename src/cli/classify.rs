//! `genomamba classify`: one label per record from the sequence head (mean-pooled states).

use burn::tensor::{Tensor, TensorData};
use clap::Args;

use genomamba::infer::pool::{Pool, Pooler};
use genomamba::infer::run_batch;
use genomamba::io::output::Output;
use genomamba::model::HeadKind;
use genomamba::model::weights::host_values;
use genomamba::{Error, Result};

use super::common::{InputArgs, progress, report_skipped};

/// Arguments of `classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output TSV (`-` for stdout): id, length, label, p_<label> per class.
    #[arg(short = 'o', long = "output")]
    pub output: String,
}

pub fn run(a: ClassifyArgs) -> Result<()> {
    let (device, model) = a.input.setup()?;
    let labels = match &model.config.head {
        Some(h) if h.kind == HeadKind::Sequence => h.labels.clone(),
        Some(_) => {
            return Err(Error::model(
                &a.input.model,
                "this model has a per-position head",
                "use `genomamba annotate` with it, or a model with a sequence head",
            ));
        }
        None => {
            return Err(Error::model(
                &a.input.model,
                "this model has no classification head",
                "train one with `genomamba train`, or create one with `genomamba init --head sequence --labels A,B`",
            ));
        }
    };
    let d = model.backbone.d_model();
    let mut out = Output::create(&a.output)?;
    let mut header = String::from("id\tlength\tlabel");
    for l in &labels {
        header.push_str(&format!("\tp_{l}"));
    }
    header.push('\n');
    out.write_all(header.as_bytes())?;
    let pb = progress(a.input.quiet, "classify");
    let mut skipped = 0;
    a.input.for_each_batch(&mut skipped, &mut |batch| {
        let seqs: Vec<&[u8]> = batch.iter().map(|r| r.tokens.as_slice()).collect();
        let mut pools = vec![Pooler::new(Pool::Mean, d); batch.len()];
        run_batch(
            &model.backbone,
            &seqs,
            a.input.chunk_size,
            &device,
            &mut |c| {
                for (b, p) in pools.iter_mut().enumerate() {
                    let valid = seqs[b].len().saturating_sub(c.start).min(c.len);
                    for t in 0..valid {
                        p.push(c.at(b, t));
                    }
                }
                pb.inc((c.len * seqs.len()) as u64);
                Ok(())
            },
        )?;
        let pooled: Vec<f32> = pools
            .iter()
            .flat_map(|p| p.finish().unwrap_or_else(|| vec![0.0; d]))
            .collect();
        let x: Tensor<2> = Tensor::from_data(TensorData::new(pooled, [batch.len(), d]), &device);
        let probs = model
            .head_probs(x)
            .map(host_values)
            .ok_or_else(|| Error::Runtime("model head vanished".into()))?;
        let n = labels.len();
        for (i, rec) in batch.iter().enumerate() {
            let p = &probs[i * n..(i + 1) * n];
            let best = argmax(p);
            let mut line = format!("{}\t{}\t{}", rec.id, rec.tokens.len(), labels[best]);
            for v in p {
                line.push_str(&format!("\t{v:.6}"));
            }
            line.push('\n');
            out.write_all(line.as_bytes())?;
        }
        Ok(())
    })?;
    out.commit()?;
    pb.finish_and_clear();
    report_skipped(skipped, a.input.quiet);
    Ok(())
}

/// Index of the largest value (first on ties).
pub fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

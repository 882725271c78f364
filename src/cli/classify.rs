//! `genomamba classify`: one label per record from the sequence head (mean-pooled states).

use burn::tensor::Tensor;
use clap::Args;

use genomamba::infer::pool::{Pool, Pooler};
use genomamba::io::fastx::RecordMeta;
use genomamba::io::output::Output;
use genomamba::model::{HeadKind, HostHead};
use genomamba::{Error, Result};

use super::common::{InputArgs, RecordSink, check_finite, check_some_records, report_skipped};

/// Arguments of `classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output TSV (`-` for stdout): id, length, label, p_<label> per class.
    #[arg(short = 'o', long = "output")]
    pub output: String,
}

struct ClassifySink {
    out: Output,
    head: HostHead,
    labels: Vec<String>,
    d: usize,
    rc: bool,
}

impl RecordSink for ClassifySink {
    /// Mean of the forward strand's states, and of the reverse complement's (rc heads).
    type Acc = (Pooler, Pooler);

    fn begin(&mut self, _: &RecordMeta) -> Result<Self::Acc> {
        Ok((
            Pooler::new(Pool::Mean, self.d),
            Pooler::new(Pool::Mean, self.d),
        ))
    }

    fn rows(
        &mut self,
        acc: &mut Self::Acc,
        _: &RecordMeta,
        _: usize,
        rows: &[f32],
        d: usize,
    ) -> Result<()> {
        acc.0.push_rows(rows, d);
        Ok(())
    }

    fn rows_tensor(
        &mut self,
        acc: &mut Self::Acc,
        _: &RecordMeta,
        _: usize,
        hidden: Tensor<2>,
    ) -> Result<()> {
        acc.0.push_tensor(hidden);
        Ok(())
    }

    fn rows_rc(
        &mut self,
        acc: &mut Self::Acc,
        _: &RecordMeta,
        _: usize,
        rows: &[f32],
        d: usize,
    ) -> Result<()> {
        acc.1.push_rows(rows, d);
        Ok(())
    }

    fn end(&mut self, mut acc: Self::Acc, meta: &RecordMeta, len: usize) -> Result<()> {
        let pooled = acc.0.finish().unwrap_or_else(|| vec![0.0; self.d]);
        let mut p = vec![0.0f32; self.labels.len()];
        self.head.probs(&pooled, &mut p);
        if self.rc {
            // Strand-symmetric prediction: the mean of both strands' probabilities.
            let pooled_rc = acc.1.finish().unwrap_or_else(|| vec![0.0; self.d]);
            let mut q = vec![0.0f32; self.labels.len()];
            self.head.probs(&pooled_rc, &mut q);
            for (a, b) in p.iter_mut().zip(&q) {
                *a = 0.5 * (*a + b);
            }
        }
        check_finite(&p, meta, |_| None)?;
        let mut line = format!("{}\t{len}\t{}", meta.id, self.labels[argmax(&p)]);
        for v in &p {
            line.push_str(&format!("\t{v:.6}"));
        }
        line.push('\n');
        self.out.write_all(line.as_bytes())
    }
}

pub fn run(a: ClassifyArgs) -> Result<()> {
    let (device, model) = a.input.setup(&[("-o", &a.output)])?;
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
                "train one with `genomamba train`, or create one with `genomamba init -o DIR --head sequence --labels A,B`",
            ));
        }
    };
    let rc = model.config.head.as_ref().is_some_and(|h| h.rc_average);
    let head = model
        .host_head()
        .ok_or_else(|| Error::Runtime("the model's head has no weights".into()))?;
    let mut out = Output::create(&a.output)?;
    let mut header = String::from("id\tlength\tlabel");
    for l in &labels {
        header.push_str(&format!("\tp_{l}"));
    }
    header.push('\n');
    out.write_all(header.as_bytes())?;
    let pb = a.input.progress("classify");
    let mut sink = ClassifySink {
        out,
        head,
        labels,
        d: model.backbone.d_model(),
        rc,
    };
    let skipped = a.input.drive(&model, &device, &pb, &mut sink, rc)?;
    check_some_records(&skipped)?;
    sink.out.commit()?;
    pb.finish_and_clear();
    report_skipped(&skipped);
    Ok(())
}

pub use genomamba::train::trainer::argmax;

//! `genomamba embed`: final hidden states, pooled per record (TSV) or per position (.npy).

use std::collections::HashSet;
use std::path::Path;

use clap::Args;

use genomamba::infer::pool::{Pool, Pooler};
use genomamba::infer::run_batch;
use genomamba::io::output::{Output, npy_header, safe_file_name};
use genomamba::{Error, Result};

use super::common::{InputArgs, fmt_f32, progress, report_skipped};

/// Arguments of `embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output: a TSV file (`-` for stdout) for pooled embeddings; a directory for `--pool none`.
    #[arg(short = 'o', long = "output")]
    pub output: String,
    /// Pooling over positions: mean, max, last, or none (per-position, needs --format npy).
    #[arg(long, default_value = "mean")]
    pub pool: String,
    /// Output format: tsv (pooled) or npy (per-position, one OUT/<id>.npy per record).
    #[arg(long)]
    pub format: Option<String>,
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let per_position = a.pool == "none";
    let format = a
        .format
        .clone()
        .unwrap_or_else(|| if per_position { "npy" } else { "tsv" }.to_string());
    match (per_position, format.as_str()) {
        (true, "npy") => {}
        (false, "tsv") => {}
        (true, f) => {
            return Err(Error::usage(
                format!("--pool none writes per-position arrays; format '{f}' cannot hold them"),
                "use --pool none --format npy (or a pooled --pool mean|max|last with tsv)",
            ));
        }
        (false, f) => {
            return Err(Error::usage(
                format!("format '{f}' is not available for pooled embeddings"),
                "use --format tsv, or --pool none --format npy for per-position arrays",
            ));
        }
    }
    let pool = if per_position {
        None
    } else {
        Some(a.pool.parse::<Pool>()?)
    };
    let (device, model) = a.input.setup()?;
    let d = model.backbone.d_model();
    let pb = progress(a.input.quiet, "embed");
    let mut skipped = 0;
    match pool {
        Some(pool) => {
            let mut out = Output::create(&a.output)?;
            let mut line = String::from("id\tlength");
            for i in 0..d {
                line.push_str(&format!("\tdim_{i}"));
            }
            line.push('\n');
            out.write_all(line.as_bytes())?;
            a.input.for_each_batch(&mut skipped, &mut |batch| {
                let seqs: Vec<&[u8]> = batch.iter().map(|r| r.tokens.as_slice()).collect();
                let mut pools = vec![Pooler::new(pool, d); batch.len()];
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
                for (rec, p) in batch.iter().zip(&pools) {
                    let mut line = format!("{}\t{}", rec.id, rec.tokens.len());
                    if let Some(v) = p.finish() {
                        for x in v {
                            line.push('\t');
                            fmt_f32(x, &mut line);
                        }
                    }
                    line.push('\n');
                    out.write_all(line.as_bytes())?;
                }
                Ok(())
            })?;
            out.commit()?;
        }
        None => {
            let dir = Path::new(&a.output);
            std::fs::create_dir_all(dir).map_err(|e| Error::io(&a.output, e))?;
            let mut seen = HashSet::new();
            a.input.for_each_batch(&mut skipped, &mut |batch| {
                let seqs: Vec<&[u8]> = batch.iter().map(|r| r.tokens.as_slice()).collect();
                let mut outs = Vec::with_capacity(batch.len());
                for rec in &batch {
                    let name = format!("{}.npy", safe_file_name(&rec.id));
                    if !seen.insert(name.clone()) {
                        return Err(Error::input(
                            &rec.source,
                            format!("two records map to the same output file {name}"),
                            "give records unique ids",
                        )
                        .in_record(&rec.id));
                    }
                    let path = dir.join(&name);
                    let mut o = Output::create(&path.to_string_lossy())?;
                    o.write_all(&npy_header(&[rec.tokens.len(), d]))?;
                    outs.push(o);
                }
                run_batch(
                    &model.backbone,
                    &seqs,
                    a.input.chunk_size,
                    &device,
                    &mut |c| {
                        for (b, o) in outs.iter_mut().enumerate() {
                            let valid = seqs[b].len().saturating_sub(c.start).min(c.len);
                            let mut bytes = Vec::with_capacity(valid * d * 4);
                            for t in 0..valid {
                                for x in c.at(b, t) {
                                    bytes.extend_from_slice(&x.to_le_bytes());
                                }
                            }
                            o.write_all(&bytes)?;
                        }
                        pb.inc((c.len * seqs.len()) as u64);
                        Ok(())
                    },
                )?;
                for o in outs {
                    o.commit()?;
                }
                Ok(())
            })?;
        }
    }
    pb.finish_and_clear();
    report_skipped(skipped, a.input.quiet);
    Ok(())
}

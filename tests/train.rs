//! `genomamba train` and `genomamba baseline` as a user runs them: both tasks learn an easy
//! synthetic signal, the model directory works with `classify`/`annotate`, `--resume`
//! continues exactly, fine-tuning a Hugging Face checkpoint, and bad inputs (exit 2, one line,
//! nothing written).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Out {
    let o = Command::cargo_bin("genomamba")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(o.code, 0, "genomamba {args:?} failed: {}", o.stderr);
    o.stdout
}

fn bad(args: &[&str], needle: &str) {
    let o = run(args);
    assert_eq!(o.code, 2, "expected exit 2 for {args:?}: {}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {}", o.stderr);
    assert!(o.stderr.contains(needle), "'{needle}' not in: {}", o.stderr);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn random_dna(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| b"ACGT"[rng.random_range(0..4)] as char)
        .collect()
}

/// Two classes of 60-base sequences: class `motif` carries GGGCCCGGG somewhere, `plain` not.
fn write_classes(dir: &Path, n: usize, seed: u64) -> (PathBuf, PathBuf) {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = dir.join("motif.fa");
    let b = dir.join("plain.fa");
    let mut fa = std::fs::File::create(&a).unwrap();
    let mut fb = std::fs::File::create(&b).unwrap();
    for i in 0..n {
        let mut s = random_dna(&mut rng, 60);
        let p = rng.random_range(0..50);
        s.replace_range(p..p + 9, "GGGCCCGGG");
        writeln!(fa, ">m{i}\n{s}").unwrap();
        let n = 50 + rng.random_range(0..20);
        let t = random_dna(&mut rng, n);
        writeln!(fb, ">p{i}\n{t}").unwrap();
    }
    (a, b)
}

/// `train -o OUT --class A --class B` and `extra`.
fn two_classes<'a>(out: &'a str, a: &'a str, b: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "-o", out, "--class", a, "--class", b];
    args.extend_from_slice(extra);
    args
}

/// A model directory's `config.json`.
fn config_of(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn last_val(out: &Path, key: &str) -> f64 {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last = text.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    v["val"][key].as_f64().unwrap()
}

/// Writes one record as `CHROM.fa` and its labels as `CHROM.bed` in `dir`.
fn write_labeled(dir: &Path, chrom: &str, seq: &str, bed: &str) -> (PathBuf, PathBuf) {
    let fa = dir.join(format!("{chrom}.fa"));
    std::fs::write(&fa, format!(">{chrom}\n{seq}\n")).unwrap();
    let bedp = dir.join(format!("{chrom}.bed"));
    std::fs::write(&bedp, bed).unwrap();
    (fa, bedp)
}

fn reverse_complement(seq: &str) -> String {
    seq.bytes()
        .rev()
        .map(|b| match b {
            b'A' => 'T',
            b'C' => 'G',
            b'G' => 'C',
            b'T' => 'A',
            _ => 'N',
        })
        .collect()
}

/// Largest difference between `annotate`'s class-1 probabilities of `stretch` (run whole)
/// and those of its reverse complement (run in chunks of 700, state carried), mirrored.
fn strand_mismatch(dir: &Path, model: &Path, stretch: &str) -> f64 {
    let fwd = dir.join("f.fa");
    let rev = dir.join("r.fa");
    std::fs::write(&fwd, format!(">s\n{stretch}\n")).unwrap();
    std::fs::write(&rev, format!(">s\n{}\n", reverse_complement(stretch))).unwrap();
    let probs = |input: &Path, chunk: &str| -> Vec<f64> {
        let t = dir.join("p.tsv");
        ok(&[
            "annotate",
            "-m",
            s(model),
            s(input),
            "--tsv",
            s(&t),
            "--chunk-size",
            chunk,
            "--quiet",
        ]);
        std::fs::read_to_string(&t)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split('\t').nth(4).unwrap().parse().unwrap())
            .collect()
    };
    let pf = probs(&fwd, "8192");
    let mut pr = probs(&rev, "700");
    pr.reverse();
    assert_eq!(pf.len(), stretch.len());
    pf.iter()
        .zip(&pr)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

const TINY: &[&str] = &[
    "--d-model",
    "16",
    "--n-layer",
    "2",
    "--d-state",
    "4",
    "--threads",
    "2",
    "--quiet",
];

#[test]
fn sequence_training_learns_and_classifies() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 150, 1);
    let out = dir.path().join("model");
    let ca = format!("motif={}", s(&a));
    let cb = format!("plain={}", s(&b));
    let mut args = vec![
        "train",
        "-o",
        s(&out),
        "--class",
        &ca,
        "--class",
        &cb,
        "--epochs",
        "6",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
        "--warmup-steps",
        "5",
        "--seed",
        "3",
        "--rc-average",
    ];
    args.extend_from_slice(TINY);
    ok(&args);
    // A log line per epoch with validation metrics; the easy motif is learned.
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6);
    let cfg = config_of(&out);
    assert_eq!(cfg["head"]["kind"], "sequence");
    assert_eq!(cfg["head"]["labels"], serde_json::json!(["motif", "plain"]));
    assert_eq!(cfg["head"]["rc_average"], true);
    let prov = &cfg["provenance"];
    assert_eq!(prov["data"].as_array().unwrap().len(), 2);
    assert_eq!(prov["data"][0]["sha256"].as_str().unwrap().len(), 64);
    assert!(prov["command"].as_str().unwrap().contains("train"));
    let best = prov["validation"]["auroc"].as_f64().unwrap();
    assert!(best > 0.9, "validation auROC {best}");

    // The directory works with classify; RC averaging makes a sequence and its reverse
    // complement score the same.
    let q = dir.path().join("q.fa");
    std::fs::write(
        &q,
        ">f\nACGTTGGGCCCGGGATTACAGATTACAGGATCCATGC\n>r\nGCATGGATCCTGTAATCTGTAATCCCGGGCCCAACGT\n",
    )
    .unwrap();
    let t = dir.path().join("pred.tsv");
    ok(&["classify", "-m", s(&out), s(&q), "-o", s(&t), "--quiet"]);
    let text = std::fs::read_to_string(&t).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 2);
    let pf: f64 = rows[0][3].parse().unwrap();
    let pr: f64 = rows[1][3].parse().unwrap();
    assert!((pf - pr).abs() < 2e-5, "{pf} vs {pr}");
    assert!(pf > 0.5, "the motif sequence is called motif: {pf}");
    // `info` shows the provenance.
    let info = ok(&["info", "-m", s(&out)]);
    assert!(info.contains("motif"));
}

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 40, 2);
    let ca = format!("motif={}", s(&a));
    let cb = format!("plain={}", s(&b));
    let whole = dir.path().join("whole");
    let parts = dir.path().join("parts");
    let base = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "-o",
            s(out),
            "--class",
            &ca,
            "--class",
            &cb,
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--warmup-steps",
            "3",
            "--seed",
            "9",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(TINY.iter().map(|x| x.to_string()));
        v
    };
    let w = base(&whole);
    ok(&w.iter().map(String::as_str).collect::<Vec<_>>());
    let mut p1 = base(&parts);
    p1.extend(["--stop-after".to_string(), "1".to_string()]);
    ok(&p1.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        std::fs::read_to_string(parts.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    // Resuming with other options is refused.
    let mut changed = base(&parts);
    changed.extend(["--resume", "--lr", "0.5"].map(String::from));
    let o = run(&changed.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("(lr: 0.002 in the checkpoint, 0.5 now)"),
        "the option that differs is named: {}",
        o.stderr
    );
    // ... and so is resuming on other data, classes or architecture (with an extra class the
    // checkpoint's head had no row for it: an out-of-bounds panic before).
    let swapped = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .map(|x| {
                if x == ca {
                    format!("motif={}", s(&b))
                } else if x == cb {
                    format!("plain={}", s(&a))
                } else {
                    x
                }
            })
            .collect()
    };
    let extra_file = dir.path().join("extra.fa");
    std::fs::write(&extra_file, ">e\nACGTACGTAAAC\n>f\nTTTTGGGGCCCA\n").unwrap();
    let extra = format!("extra={}", s(&extra_file));
    // A resume refused with one line that says `cannot resume` and `needle`.
    let refused = |args: &[String], needle: &str| {
        let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.contains("cannot resume"), "{}", o.stderr);
        assert!(o.stderr.contains(needle), "{needle}: {}", o.stderr);
        assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    };
    for (mut args, needle) in [
        (
            swapped(base(&parts)),
            format!("is not the file {} the checkpoint was trained on", s(&a)),
        ),
        (
            [base(&parts), vec!["--class".into(), extra.clone()]].concat(),
            "data: 2 files in the checkpoint, 3 now".to_string(),
        ),
        (
            [base(&parts), vec!["--rc-average".into()]].concat(),
            "head.rc_average: false in the checkpoint, true now".to_string(),
        ),
    ] {
        args.push("--resume".to_string());
        refused(&args, &needle);
    }
    let mut p2 = base(&parts);
    p2.push("--resume".to_string());
    // A hand-edited or damaged checkpoint is refused: a step count past the last epoch's (it
    // wrapped around and restarted the warm-up), more epochs done than logged; so is a run
    // directory whose best model is gone (a run that then found no better epoch would leave
    // a directory that cannot be loaded).
    let state_path = parts.join("checkpoint/trainer.json");
    let state = std::fs::read_to_string(&state_path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&state).unwrap();
    for (key, bad, needle) in [
        (
            "step",
            serde_json::json!(u64::MAX),
            "step 18446744073709551615 but the last epoch ended at step",
        ),
        (
            "epochs_done",
            serde_json::json!(2),
            "2 epochs done but 1 logged",
        ),
    ] {
        let mut edited = value.clone();
        edited[key] = bad;
        std::fs::write(&state_path, edited.to_string()).unwrap();
        refused(&p2, &format!("is damaged ({needle}"));
    }
    std::fs::write(&state_path, &state).unwrap();
    let best = parts.join("model.safetensors");
    let kept = std::fs::read(&best).unwrap();
    std::fs::remove_file(&best).unwrap();
    refused(&p2, "(the best model so far, of epoch 1) is missing");
    std::fs::write(&best, kept).unwrap();
    ok(&p2.iter().map(String::as_str).collect::<Vec<_>>());
    let strip = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("seconds");
                o.remove("train_bases_per_s");
                v
            })
            .collect()
    };
    // Same epochs, steps and learning rates; losses and scores equal to float noise (the
    // weights, below, are bit-identical).
    let (w, p) = (strip(&whole), strip(&parts));
    assert_eq!(w.len(), p.len());
    for (a, b) in w.iter().zip(&p) {
        assert_eq!(a["epoch"], b["epoch"]);
        assert_eq!(a["step"], b["step"]);
        assert_eq!(a["lr"], b["lr"]);
        let close = |x: &serde_json::Value, y: &serde_json::Value| {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 1e-6
        };
        assert!(close(&a["train_loss"], &b["train_loss"]), "{a} vs {b}");
        for (k, v) in a["val"].as_object().unwrap() {
            assert!(close(v, &b["val"][k]), "{k}: {a} vs {b}");
        }
    }
    assert_eq!(
        std::fs::read(whole.join("checkpoint/model.safetensors")).unwrap(),
        std::fs::read(parts.join("checkpoint/model.safetensors")).unwrap(),
        "resumed weights differ from an uninterrupted run"
    );
    // `init --force` over the run takes its log and checkpoint along: a later --resume would
    // go on with a model that is gone.
    let o = run(&["init", "-o", s(&parts), "--force", "--d-model", "16"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("removed the replaced model's checkpoint/ and metrics.jsonl"),
        "{}",
        o.stderr
    );
    assert!(!parts.join("checkpoint").exists() && !parts.join("metrics.jsonl").exists());
}

#[test]
fn an_interrupted_run_keeps_its_last_epoch_and_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 40, 2);
    let (ca, cb) = (format!("motif={}", s(&a)), format!("plain={}", s(&b)));
    let out = dir.path().join("run");
    let mut args: Vec<&str> = vec![
        "train",
        "-o",
        s(&out),
        "--class",
        &ca,
        "--class",
        &cb,
        "--epochs",
        "100000",
        "--batch-size",
        "8",
        "--seed",
        "9",
    ];
    args.extend(TINY);
    let child = Command::cargo_bin("genomamba")
        .unwrap()
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Far from its last epoch once the first checkpoint is there.
    let start = std::time::Instant::now();
    while !out.join("checkpoint/trainer.json").exists() {
        assert!(start.elapsed().as_secs() < 300, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // A second run into the same directory, while this one writes it, is refused (its
    // files would mix with this run's), with --force or --resume too.
    for extra in ["--force", "--resume"] {
        let mut second = args.clone();
        second.push(extra);
        bad(&second, "is being written by another genomamba train run");
    }
    // SAFETY: `kill` only sends a signal to the child's process id.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("genomamba: interrupted by SIGINT")
            && last.contains("the last finished epoch is saved in")
            && last.ends_with("checkpoint: run the same command with --resume to continue"),
        "{stderr}"
    );
    // Nothing half-written: no temporary file or directory, a model that loads, a checkpoint
    // that resumes.
    let hidden: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "left behind: {hidden:?}");
    ok(&["info", "-m", s(&out)]);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoint/trainer.json")).unwrap(),
    )
    .unwrap();
    let done = state["epochs_done"].as_u64().unwrap() as usize;
    assert!(done >= 1);
    // What a run killed outright can leave: a log one epoch ahead of its checkpoint, the
    // temporary files of a save, and a checkpoint swap cut between its two renames (on a
    // file system without an atomic exchange: the new one complete under its temporary
    // name, the old one moved aside). The resumed run puts it all right.
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last = log.lines().last().unwrap().to_string();
    std::fs::write(out.join("metrics.jsonl"), format!("{log}{last}\n")).unwrap();
    std::fs::write(out.join(".config.json.1.2.tmp"), "{").unwrap();
    std::fs::write(out.join(".model.safetensors.1.3.tmp"), "").unwrap();
    std::fs::rename(out.join("checkpoint"), out.join(".checkpoint.tmp")).unwrap();
    std::fs::create_dir(out.join(".checkpoint.old")).unwrap();
    let next = (done + 1).to_string();
    let mut again = args.clone();
    again.extend(["--resume", "--stop-after", &next]);
    let o = run(&again);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr.contains("recovered the checkpoint of"),
        "{}",
        o.stderr
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoint/trainer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["epochs_done"].as_u64(), Some(done as u64 + 1));
    let epochs: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, (1..=done as u64 + 1).collect::<Vec<_>>());
    let hidden: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "left behind: {hidden:?}");
    // A run may not write over the model it starts from.
    bad(
        &[
            "train",
            "-o",
            s(&out),
            "--from",
            s(&out),
            "--class",
            &ca,
            "--class",
            &cb,
            "--force",
        ],
        "is the --from model",
    );

    // --force over this run: one that fails before its first epoch ends (it diverges) leaves
    // the previous model, log and checkpoint as they were; one that finishes replaces them.
    let files = [
        "model.safetensors",
        "config.json",
        "metrics.jsonl",
        "checkpoint/trainer.json",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    // One epoch instead of 100,000.
    let one_epoch: Vec<&str> = args
        .iter()
        .map(|a| if *a == "100000" { "1" } else { *a })
        .collect();
    let mut diverging = one_epoch.clone();
    diverging.extend(["--force", "--lr", "1e30", "--warmup-steps", "0"]);
    let o = run(&diverging);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("diverged"), "{}", o.stderr);
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(out.join(f)).unwrap(), b, "{f} changed");
    }
    let mut replacing = one_epoch.clone();
    replacing.push("--force");
    ok(&replacing);
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert_ne!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before[0]
    );
}

/// A kept head must get training data for every class it has: a class without any was kept
/// silently and only trained away (the per-position task already refused it), and the hint
/// for a validation label the training data lacks named a model and `--replace-head` where
/// there was neither.
#[test]
fn kept_heads_need_every_class_and_validation_labels_are_the_training_data_s() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 12, 9);
    let (ca, cb) = (format!("motif={}", s(&a)), format!("plain={}", s(&b)));
    let three = dir.path().join("three");
    ok(&[
        "init",
        "-o",
        s(&three),
        "--d-model",
        "8",
        "--n-layer",
        "1",
        "--head",
        "sequence",
        "--labels",
        "motif,plain,other",
    ]);
    let out = dir.path().join("ft");
    let mut args = vec![
        "train",
        "-o",
        s(&out),
        "--from",
        s(&three),
        "--class",
        &ca,
        "--class",
        &cb,
    ];
    args.extend([
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--threads",
        "2",
        "--quiet",
    ]);
    bad(
        &args,
        "the model's class(es) other have no training data (the model's classes are motif, plain, other; the training data's are motif, plain)",
    );
    assert!(!out.exists());
    // A class the head lacks: the class is named.
    let odd = format!("Motif={}", s(&a));
    let mut wrong = vec![
        "train",
        "-o",
        s(&out),
        "--from",
        s(&three),
        "--class",
        &odd,
        "--class",
        &cb,
    ];
    wrong.extend(["--epochs", "1", "--threads", "2", "--quiet"]);
    bad(&wrong, "unknown class 'Motif' in the training data");
    args.push("--replace-head");
    ok(&args);

    let tsv = dir.path().join("val.tsv");
    std::fs::write(&tsv, "sequence\tlabel\nACGTACGT\tmotif\nACGTTTGT\toct4\n").unwrap();
    let out2 = dir.path().join("new");
    let mut args = vec![
        "train",
        "-o",
        s(&out2),
        "--class",
        &ca,
        "--class",
        &cb,
        "--val-tsv",
        s(&tsv),
    ];
    args.extend(TINY);
    let o = run(&args);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("unknown class 'oct4' (the training data's classes: motif, plain)")
            && o.stderr
                .contains("give validation rows only classes the training data has")
            && !o.stderr.contains("--replace-head"),
        "{}",
        o.stderr
    );
}

#[test]
fn runs_that_cannot_give_a_usable_model_stop_with_one_line_and_save_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 24, 5);
    let (ca, cb) = (format!("motif={}", s(&a)), format!("plain={}", s(&b)));
    let out = dir.path().join("run");
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["train", "-o", s(&out), "--class", &ca, "--class", &cb]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(TINY.iter().chain(extra).map(|x| x.to_string()));
        v
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    // Values the optimiser (f32) cannot hold.
    bad(
        &args(&base(&["--lr", "1e39"])),
        "--lr must be a positive number",
    );
    bad(
        &args(&base(&["--weight-decay", "1e39"])),
        "--weight-decay must be within f32's range",
    );
    // A negative value is named with its own flag (a negative number is a value, not a flag).
    bad(
        &args(&base(&["--clip-norm", "-1"])),
        "--clip-norm must be a number, not negative (got -1)",
    );
    bad(
        &args(&base(&["--weight-decay=-0.5"])),
        "--weight-decay must be a number, not negative (got -0.5)",
    );
    assert!(!out.exists());
    // A step so large that the model's predictions become NaN: validation used to floor
    // them into a finite loss, and the run saved an unusable model with exit 0.
    let o = run(&args(&base(&[
        "--lr",
        "1e30",
        "--clip-norm",
        "0",
        "--warmup-steps",
        "0",
        "--batch-size",
        "64",
        "--epochs",
        "1",
    ])));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("training diverged"), "{}", o.stderr);
    assert!(
        !out.exists(),
        "a diverged first epoch left {}",
        out.display()
    );
    // A starting model whose outputs are already NaN: its fault, not the learning rate's.
    let m = dir.path().join("m");
    ok(&["init", "-o", s(&m), "--d-model", "16", "--n-layer", "1"]);
    common::set_tensor(&m, "layers.0.mixer.in_proj.weight", 1e30);
    bad(
        &[
            "train",
            "-o",
            s(&out),
            "--from",
            s(&m),
            "--class",
            &ca,
            "--class",
            &cb,
        ],
        "before any training step: the starting model gives non-finite outputs",
    );
    assert!(!out.exists());
    // A directory holding only what a run killed outright leaves (a temporary log) is not
    // "already there": the next run goes ahead and removes it.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join(".metrics.jsonl.1.2.tmp"), "{").unwrap();
    ok(&args(&base(&["--epochs", "1"])));
    assert!(!out.join(".metrics.jsonl.1.2.tmp").exists());
    std::fs::remove_dir_all(&out).unwrap();
    // A per-position split whose held-out stretch is all N would score nothing (a loss of 0
    // every epoch).
    let seq = format!("{}{}", "ACGT".repeat(675), "N".repeat(300));
    let (fa, bedp) = write_labeled(dir.path(), "chrN", &seq, "chrN\t100\t400\tgene\n");
    bad(
        &[
            "train",
            "-o",
            s(&out),
            "--fasta",
            s(&fa),
            "--bed",
            s(&bedp),
            "--window",
            "256",
            "--windows-per-epoch",
            "4",
            "--d-model",
            "8",
            "--n-layer",
            "1",
        ],
        "the held-out (validation) part of the records has no base to score",
    );
    assert!(!out.exists());
}

/// `--gff` reads its file as GFF3/GTF: feature types name the classes, 1-based inclusive
/// coordinates; a first row that does not look like GFF is refused in GFF's terms.
#[test]
fn gff_flag_reads_labels_as_gff() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let seq = random_dna(&mut rng, 4000);
    // No header; a gene around the parts, which no class takes.
    let gff = "chrT\tsrc\tCDS\t101\t400\t.\t+\t0\tID=a\n\
               chrT\tsrc\tgene\t50\t3000\t.\t+\t.\tID=g\n\
               chrT\tsrc\tCDS\t3401\t3700\t.\t-\t0\tID=b\n";
    let (fa, gffp) = write_labeled(dir.path(), "chrT", &seq, gff);
    // A second record, of background only.
    let second = random_dna(&mut rng, 1000);
    std::fs::write(&fa, format!(">chrT\n{seq}\n>chrU\n{second}\n")).unwrap();
    let out = dir.path().join("m");
    let mut args = vec!["train", "-o", s(&out), "--fasta", s(&fa), "--gff", s(&gffp)];
    args.extend_from_slice(&["--bed-class", "coding=CDS", "--val-fraction", "0.2"]);
    args.extend_from_slice(&["--window", "256", "--windows-per-epoch", "8"]);
    args.extend_from_slice(&["--batch-size", "4", "--epochs", "1"]);
    args.extend_from_slice(TINY);
    ok(&args);
    let cfg = config_of(&out);
    assert_eq!(
        cfg["head"]["labels"],
        serde_json::json!(["background", "coding"])
    );
    // 101-400 (300 bases) before chrT's held-out last 800 bases, 3401-3700 in them; chrU
    // adds 800 and 200 bases of background.
    let counts = &cfg["provenance"]["counts"];
    assert_eq!(counts["train_class_bases"], serde_json::json!([3700, 300]));
    assert_eq!(counts["val_class_bases"], serde_json::json!([700, 300]));
    // Resuming (even a finished run) with other `--records` is refused, since it would
    // train and validate on other bases; the same records in another order are the same
    // data.
    let o = run(&[&args[..], &["--resume", "--records", "chrT"]].concat());
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("cannot resume: this run differs from the checkpoint's (")
            && o.stderr
                .contains("counts.val_bases: 1000 in the checkpoint, 800 now"),
        "{}",
        o.stderr
    );
    ok(&[&args[..], &["--resume", "--records", "chrU,chrT"]].concat());
    // A BED given as GFF is refused as a GFF line, not read by its looks.
    let bed = dir.path().join("labels.bed");
    std::fs::write(&bed, "chrT\t100\t400\tCDS\n").unwrap();
    let o = dir.path().join("never");
    let gff_args = |labels: &Path| {
        vec![
            "train".to_string(),
            "-o".into(),
            s(&o).into(),
            "--fasta".into(),
            s(&fa).into(),
            "--gff".into(),
            s(labels).into(),
            "--bed-class".into(),
            "coding=CDS".into(),
        ]
    };
    let args = gff_args(&bed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bad(
        &args,
        "4 tab-separated columns, where a GFF feature line has nine (line 1)",
    );
    bad(
        &[&args[..], &["--bed", s(&bed)]].concat(),
        "--gff cannot be used with --bed; leave out --gff, or --bed",
    );
    bad(
        &["train", "-o", s(&o), "--gff", s(&gffp)],
        "--fasta and --bed (or --gff) go together",
    );
    assert!(!o.exists());
}

/// A reference with a repeated "gene" pattern labeled in a BED; a position model learns it.
#[test]
fn position_training_learns_and_annotates() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let mut seq = String::new();
    let mut bed = String::new();
    while seq.len() < 30_000 {
        let gap = rng.random_range(80..200);
        seq.push_str(&random_dna(&mut rng, gap));
        let start = seq.len();
        // A low-complexity "feature": alternating CA repeats.
        let n = rng.random_range(40..120);
        for _ in 0..n {
            seq.push_str("CA");
        }
        bed.push_str(&format!("chrT\t{start}\t{}\trepeat\n", seq.len()));
    }
    // N run: masked from the loss.
    seq.push_str(&"N".repeat(300));
    seq.push_str(&random_dna(&mut rng, 500));
    let (fa, bedp) = write_labeled(dir.path(), "chrT", &seq, &bed);
    let out = dir.path().join("pos");
    let mut args = vec![
        "train",
        "-o",
        s(&out),
        "--fasta",
        s(&fa),
        "--bed",
        s(&bedp),
        "--bed-class",
        "cpg=repeat",
        "--window",
        "256",
        "--windows-per-epoch",
        "64",
        "--batch-size",
        "8",
        "--epochs",
        "4",
        "--lr",
        "0.01",
        "--warmup-steps",
        "4",
        "--val-fraction",
        "0.2",
        "--rc-average",
    ];
    args.extend_from_slice(TINY);
    ok(&args);
    let mcc = last_val(&out, "mcc");
    assert!(mcc > 0.5, "per-base MCC {mcc}");
    let cfg = config_of(&out);
    assert_eq!(
        cfg["head"]["labels"],
        serde_json::json!(["background", "cpg"])
    );
    // The labeled bases of each class on each side of the split are recorded: counted here
    // from the BED, N left out, the last 20% held out.
    let mut class = vec![0usize; seq.len()];
    for row in bed.lines() {
        let f: Vec<usize> = row
            .split('\t')
            .skip(1)
            .take(2)
            .map(|x| x.parse().unwrap())
            .collect();
        class[f[0]..f[1]].fill(1);
    }
    let cut = seq.len() - (seq.len() as f64 * 0.2).round() as usize;
    let count = |range: std::ops::Range<usize>| {
        let mut c = [0u64; 2];
        for i in range.filter(|&i| seq.as_bytes()[i] != b'N') {
            c[class[i]] += 1;
        }
        serde_json::json!(c)
    };
    let counts = &cfg["provenance"]["counts"];
    assert_eq!(counts["train_class_bases"], count(0..cut), "{counts}");
    assert_eq!(counts["val_class_bases"], count(cut..seq.len()));
    let outbed = dir.path().join("pred.bed");
    ok(&[
        "annotate",
        "-m",
        s(&out),
        s(&fa),
        "--bed",
        s(&outbed),
        "--quiet",
    ]);
    let pred = std::fs::read_to_string(&outbed).unwrap();
    assert!(pred.lines().count() > 10, "{pred}");

    // Both strands are averaged: a stretch and its reverse complement get mirrored
    // probabilities, whether the record runs whole or in chunks of 700 (state carried).
    let mirrored = |model: &Path| strand_mismatch(dir.path(), model, &seq[1000..4000]);
    let worst = mirrored(&out);
    assert!(worst <= 2e-4, "strand mismatch {worst}");

    // A bidirectional head (trained on both strands' states at every position) learns the
    // task too and is strand-symmetric as well.
    let bi = dir.path().join("bi");
    let mut args2: Vec<&str> = args
        .iter()
        .map(|a| if *a == s(&out) { s(&bi) } else { *a })
        .filter(|a| *a != "--rc-average")
        .collect();
    args2.push("--bidirectional");
    ok(&args2);
    let mcc = last_val(&bi, "mcc");
    assert!(mcc > 0.5, "bidirectional per-base MCC {mcc}");
    let cfg = config_of(&bi);
    assert_eq!(cfg["head"]["bidirectional"], true);
    let worst = mirrored(&bi);
    assert!(worst <= 2e-4, "strand mismatch {worst}");
}

/// A random open reading frame of `codons` sense codons (no TAA, TAG, TGA) and a stop.
fn random_orf(rng: &mut StdRng, codons: usize) -> String {
    let mut g = String::from("ATG");
    while g.len() < 3 * (codons + 1) {
        let c = random_dna(rng, 3);
        if !matches!(c.as_str(), "TAA" | "TAG" | "TGA") {
            g.push_str(&c);
        }
    }
    g.push_str("TAA");
    g
}

#[test]
fn orf_feature_head_finds_genes_on_both_strands() {
    // Genes are open reading frames (either strand) with the same base composition as the
    // random DNA between them: only gene structure tells them apart.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let mut seq = String::new();
    let mut bed = String::new();
    while seq.len() < 40_000 {
        let gap = rng.random_range(60..300);
        seq.push_str(&random_dna(&mut rng, gap));
        let codons = rng.random_range(100..300);
        let g = random_orf(&mut rng, codons);
        let (g, strand) = if rng.random_bool(0.5) {
            (g, "+")
        } else {
            (reverse_complement(&g), "-")
        };
        let start = seq.len();
        seq.push_str(&g);
        bed.push_str(&format!("chrG\t{start}\t{}\tCDS\t0\t{strand}\n", seq.len()));
    }
    let (fa, bedp) = write_labeled(dir.path(), "chrG", &seq, &bed);
    let out = dir.path().join("orf");
    let mut args = vec![
        "train",
        "-o",
        s(&out),
        "--fasta",
        s(&fa),
        "--bed",
        s(&bedp),
        "--bed-class",
        "coding=CDS",
        "--window",
        "512",
        "--windows-per-epoch",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--lr",
        "0.003",
        "--val-fraction",
        "0.25",
        "--bidirectional",
        "--orf-features",
        "--gc-augment",
        "0.3",
    ];
    args.extend_from_slice(TINY);
    ok(&args);
    let mcc = last_val(&out, "mcc");
    assert!(mcc > 0.6, "per-base MCC {mcc}");
    let cfg = config_of(&out);
    assert_eq!(cfg["head"]["orf_features"], true);
    // The same recipe without ORF features does much worse in the same steps (the check
    // above can fail).
    let plain = dir.path().join("plain");
    let args2: Vec<&str> = args
        .iter()
        .map(|a| if *a == s(&out) { s(&plain) } else { *a })
        .filter(|a| *a != "--orf-features")
        .collect();
    ok(&args2);
    let plain_mcc = last_val(&plain, "mcc");
    assert!(mcc > plain_mcc + 0.2, "{mcc} vs {plain_mcc}");
    // Strand symmetry holds with the features (whole-record features, long-record path).
    let worst = strand_mismatch(dir.path(), &out, &seq[2000..5000]);
    assert!(worst <= 2e-4, "strand mismatch {worst}");
    // The flag needs a bidirectional head.
    let no_bi: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--bidirectional")
        .collect();
    let o = run(&no_bi);
    assert_eq!(o.code, 2, "{}", o.stderr);
}

#[test]
fn fine_tunes_a_hugging_face_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 30, 5);
    let ca = format!("motif={}", s(&a));
    let cb = format!("plain={}", s(&b));
    let hf = root().join("tests/fixtures/hf/d16_l2_n16_e2_k4");
    let out = dir.path().join("ft");
    ok(&[
        "train",
        "-o",
        s(&out),
        "--from",
        s(&hf),
        "--class",
        &ca,
        "--class",
        &cb,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--rc-average",
        "--quiet",
    ]);
    let cfg = config_of(&out);
    assert_eq!(cfg["format"], "genomamba");
    assert_eq!(cfg["head"]["rc_average"], true);
    assert!(
        cfg["provenance"]["base_model"]
            .as_str()
            .unwrap()
            .contains("d16_l2_n16_e2_k4")
    );
    // The fine-tuned model trains on top of the checkpoint: a model with the same head but
    // random backbone differs from it.
    let q = dir.path().join("q.fa");
    std::fs::write(&q, ">x\nACGTGGGCCCGGGTTT\n").unwrap();
    ok(&[
        "classify",
        "-m",
        s(&out),
        s(&q),
        "-o",
        s(&dir.path().join("p.tsv")),
        "--quiet",
    ]);
    // Its head now exists: fine-tuning it again with other classes needs --replace-head.
    let other = format!("x={}", s(&a));
    let other2 = format!("y={}", s(&b));
    bad(
        &[
            "train",
            "-o",
            s(&dir.path().join("ft2")),
            "--from",
            s(&out),
            "--class",
            &other,
            "--class",
            &other2,
            "--epochs",
            "1",
            "--quiet",
        ],
        "--replace-head",
    );
    assert!(!dir.path().join("ft2").exists());
    // Fine-tuned again on its own classes: the kept head keeps averaging both strands (it
    // was dropped without a word), and flags of a new architecture are refused with --from
    // (they were ignored).
    let again = dir.path().join("ft3");
    let mut args = vec![
        "train",
        "-o",
        s(&again),
        "--from",
        s(&out),
        "--class",
        &ca,
        "--class",
        &cb,
        "--epochs",
        "1",
        "--batch-size",
        "8",
    ];
    let o = run(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr.contains("(rc_average); the new model keeps that"),
        "{}",
        o.stderr
    );
    let cfg = config_of(&again);
    assert_eq!(cfg["head"]["rc_average"], true);
    let wider = dir.path().join("ft4");
    args[2] = s(&wider);
    args.extend(["--d-model", "32"]);
    bad(
        &args,
        "--from cannot be used with --d-model; leave out --from, or --d-model",
    );
    assert!(!wider.exists());
}

#[test]
fn baseline_reports_on_the_same_split() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 200, 6);
    let ca = format!("motif={}", s(&a));
    let cb = format!("plain={}", s(&b));
    let out = ok(&[
        "baseline", "--class", &ca, "--class", &cb, "-k", "4", "--seed", "1",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["val"], 40);
    assert_eq!(v["train"], 360);
    let auroc = v["validation"]["auroc"].as_f64().unwrap();
    assert!(auroc > 0.8, "k-mer baseline auROC {auroc}");
    // The thread count changes nothing but the time (as for the other commands).
    let timeless = |text: &str| {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v.as_object_mut().unwrap().remove("fit_seconds");
        v
    };
    for threads in ["1", "2"] {
        let other = ok(&[
            "baseline",
            "--class",
            &ca,
            "--class",
            &cb,
            "-k",
            "4",
            "--seed",
            "1",
            "--threads",
            threads,
        ]);
        assert_eq!(timeless(&other), timeless(&out), "--threads {threads}");
    }
}

#[test]
fn a_class_missing_from_validation_picks_the_best_epoch_by_validation_loss() {
    // Validation holds only `motif` sequences, so auROC is undefined every epoch: the best
    // epoch is the one of lowest validation loss (it stayed at epoch 1 when auROC picked it).
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 100, 12);
    let held = dir.path().join("held");
    std::fs::create_dir(&held).unwrap();
    let (va, _) = write_classes(&held, 30, 13);
    let (ca, cb) = (format!("motif={}", s(&a)), format!("plain={}", s(&b)));
    let tsv = dir.path().join("val.tsv");
    let mut text = String::from("sequence\tlabel\n");
    for line in std::fs::read_to_string(&va).unwrap().lines() {
        if !line.starts_with('>') {
            text.push_str(&format!("{line}\tmotif\n"));
        }
    }
    std::fs::write(&tsv, text).unwrap();
    let out = dir.path().join("run");
    let mut args = vec![
        "train",
        "-o",
        s(&out),
        "--class",
        &ca,
        "--class",
        &cb,
        "--val-tsv",
        s(&tsv),
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--warmup-steps",
        "5",
        "--lr",
        "0.01",
    ];
    args.extend(TINY.iter().filter(|a| **a != "--quiet"));
    let o = run(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("train then picks its best epoch by validation loss alone"),
        "{}",
        o.stderr
    );
    let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["val"]["loss"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 4);
    let lowest = (0..4)
        .min_by(|&i, &j| losses[i].total_cmp(&losses[j]))
        .unwrap()
        + 1;
    assert_ne!(lowest, 1, "the loss should fall here: {losses:?}");
    let config = config_of(&out);
    let provenance = &config["provenance"];
    assert_eq!(provenance["monitored_metric"], "loss");
    // One --val-class is taken as a validation TSV of one class is (it was refused as "needs
    // at least two classes" although two --class were given).
    let val_motif = format!("motif={}", s(&va));
    let one = run(&[
        "baseline",
        "--class",
        &ca,
        "--class",
        &cb,
        "--val-class",
        &val_motif,
        "-k",
        "2",
    ]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert!(
        one.stderr
            .contains("class(es) plain have no validation sequence"),
        "{}",
        one.stderr
    );
    assert_eq!(
        provenance["best_epoch"].as_u64(),
        Some(lowest as u64),
        "{losses:?}"
    );
    // The saved model is the best epoch's, and its provenance says how far the run went
    // (it said how far the run had gone when that epoch was saved). With a learning rate too
    // small to move the weights, no epoch beats the first.
    let still = dir.path().join("still");
    let mut args = args.clone();
    args[2] = s(&still);
    let at = |args: &Vec<&str>, flag: &str| args.iter().position(|a| *a == flag).unwrap() + 1;
    let (lr, epochs) = (at(&args, "--lr"), at(&args, "--epochs"));
    args[lr] = "1e-30";
    args[epochs] = "3";
    let o = run(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let config = config_of(&still);
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(still.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let provenance = &config["provenance"];
    assert_eq!(provenance["best_epoch"].as_u64(), Some(1), "{provenance}");
    assert_eq!(provenance["epochs_run"].as_u64(), Some(3), "{provenance}");
    assert_eq!(provenance["steps"], last["step"], "{provenance}");
}

#[test]
fn separate_validation_files_are_used_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 100, 8);
    let held = dir.path().join("held");
    std::fs::create_dir(&held).unwrap();
    let (va, vb) = write_classes(&held, 30, 9);
    let spec = |name: &str, p: &Path| format!("{name}={}", s(p));
    let (ca, cb, vca, vcb) = (
        spec("motif", &a),
        spec("plain", &b),
        spec("motif", &va),
        spec("plain", &vb),
    );
    // Per-class FASTA: all of the training files train, all of the validation files validate.
    let baseline = |val_motif: &str, val_plain: &str| {
        let o = run(&[
            "baseline",
            "--class",
            &ca,
            "--class",
            &cb,
            "--val-class",
            val_motif,
            "--val-class",
            val_plain,
            "-k",
            "4",
        ]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        (v, o.stderr)
    };
    let (v, _) = baseline(&vca, &vcb);
    assert_eq!(
        (v["train"].as_u64(), v["val"].as_u64()),
        (Some(200), Some(60))
    );
    assert!(v["validation"]["auroc"].as_f64().unwrap() > 0.8, "{v}");
    assert_eq!(v["split"]["val_copies_of_train"], 0, "{v}");
    // Records of length 0 are left out of training and validation, with a warning each.
    let with_empty = |from: &Path, name: &str| {
        let path = held.join(name);
        let text = std::fs::read_to_string(from).unwrap();
        std::fs::write(&path, format!(">e1\n\n{text}>e2\n")).unwrap();
        path
    };
    let (empty_a, empty_va) = (with_empty(&a, "empty_a.fa"), with_empty(&va, "empty_va.fa"));
    let o = run(&[
        "baseline",
        "--class",
        &spec("motif", &empty_a),
        "--class",
        &cb,
        "--val-class",
        &spec("motif", &empty_va),
        "--val-class",
        &vcb,
        "-k",
        "4",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (v["train"].as_u64(), v["val"].as_u64()),
        (Some(200), Some(60))
    );
    for file in [&empty_a, &empty_va] {
        let said = format!("{}: 2 empty record(s) (length 0) skipped", s(file));
        assert!(o.stderr.contains(&said), "{said}: {}", o.stderr);
    }

    // Validation sequences copied from training ones (records m3..m5 of the training motif
    // file, the third under the other label): counted, recorded and warned about.
    let train_text = std::fs::read_to_string(&a).unwrap();
    let copied: Vec<&str> = train_text.lines().skip(6).take(6).collect();
    let mixed = held.join("mixed.fa");
    let mixed_plain = held.join("mixed_plain.fa");
    for (path, head, rest) in [
        (&mixed, &copied[..4], &va),
        (&mixed_plain, &copied[4..], &vb),
    ] {
        let rest = std::fs::read_to_string(rest).unwrap();
        std::fs::write(path, format!("{}\n{rest}", head.join("\n"))).unwrap();
    }
    let (v, stderr) = baseline(&spec("motif", &mixed), &spec("plain", &mixed_plain));
    assert_eq!(v["val"].as_u64(), Some(63));
    assert_eq!(v["split"]["val_copies_of_train"], 3, "{v}");
    assert!(
        stderr.contains("3 of 63 validation sequences are exact copies of training sequences")
            && stderr.contains("mixed.fa:m3 = ")
            && stderr.contains("motif.fa:m3)"),
        "{stderr}"
    );

    // A TSV and a validation TSV, through `train`: the split is recorded as separate files.
    let tsv = |fa: [&Path; 2], name: &str| {
        let mut text = String::from("sequence\tlabel\n");
        for (p, label) in fa.iter().zip(["motif", "plain"]) {
            for line in std::fs::read_to_string(p).unwrap().lines() {
                if !line.starts_with('>') {
                    text.push_str(&format!("{line}\t{label}\n"));
                }
            }
        }
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (t, vt) = (tsv([&a, &b], "train.tsv"), tsv([&va, &vb], "val.tsv"));
    let model = dir.path().join("m");
    let mut args = vec![
        "train",
        "-o",
        s(&model),
        "--tsv",
        s(&t),
        "--val-tsv",
        s(&vt),
        "--epochs",
        "1",
    ];
    args.extend_from_slice(TINY);
    ok(&args);
    let cfg = config_of(&model);
    let split = &cfg["provenance"]["split"];
    assert_eq!(split["kind"], "separate files", "{split}");
    assert!(
        split["val_files"].to_string().contains("val.tsv"),
        "{split}"
    );
}

#[test]
fn bad_training_input_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 20, 7);
    let ca = format!("motif={}", s(&a));
    let cb = format!("plain={}", s(&b));
    let out = dir.path().join("never");
    let o = s(&out);
    // A truncated gzip class file.
    let gz = dir.path().join("cut.fa.gz");
    {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(std::fs::read(&b).unwrap().as_slice()).unwrap();
        let bytes = e.finish().unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    }
    let cgz = format!("plain={}", s(&gz));
    let o1 = run(&["train", "-o", o, "--class", &ca, "--class", &cgz, "--quiet"]);
    assert_eq!(o1.code, 2, "{}", o1.stderr);
    assert!(o1.stderr.contains("cut.fa.gz"), "{}", o1.stderr);
    // A bad class spec.
    bad(
        &["train", "-o", o, "--class", "justapath.fa", "--class", &cb],
        "NAME=PATH",
    );
    // One file for two classes (here through a link).
    let link = dir.path().join("link.fa");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let cl = format!("plain={}", s(&link));
    bad(
        &["train", "-o", o, "--class", &ca, "--class", &cl],
        "read the same file",
    );
    // Validation files: a class that training lacks (in a copy of a training file), and a
    // training file itself.
    let copy = dir.path().join("copy.fa");
    std::fs::copy(&a, &copy).unwrap();
    for (val, needle) in [
        (format!("other={}", s(&copy)), "unknown class 'other'"),
        (
            format!("motif={}", s(&a)),
            "validation would measure memorised training sequences",
        ),
    ] {
        bad(&two_classes(o, &ca, &cb, &["--val-class", &val]), needle);
    }
    // A TSV without a header: the error quotes the first line only in part.
    let headless = dir.path().join("headless.tsv");
    std::fs::write(&headless, format!("{}\tmotif\n", "ACGT".repeat(5000))).unwrap();
    let headless_run = run(&["train", "-o", o, "--tsv", s(&headless)]);
    let stderr = &headless_run.stderr;
    assert_eq!(headless_run.code, 2, "{stderr}");
    assert!(
        stderr.len() < 400 && stderr.contains("ACGTACGT..."),
        "{stderr}"
    );
    // A TSV row without a label.
    let tsv = dir.path().join("t.tsv");
    std::fs::write(&tsv, "sequence\tlabel\nACGT\ta\nACGG\tb\nACCA\t\n").unwrap();
    bad(&["train", "-o", o, "--tsv", s(&tsv)], "line 4");
    // One sequence per class: nothing can be held out for validation.
    let two = dir.path().join("two.tsv");
    std::fs::write(&two, "sequence\tlabel\nACGTAC\ta\nACGGTT\tb\n").unwrap();
    bad(
        &["train", "-o", o, "--tsv", s(&two)],
        "the validation set is empty",
    );
    // A class of one sequence keeps it for training, with a warning.
    let one_a = dir.path().join("one_a.tsv");
    std::fs::write(
        &one_a,
        "sequence\tlabel\nACGTAC\ta\nACGGTT\tb\nACGGTA\tb\nACGGTC\tb\n",
    )
    .unwrap();
    let warned = run(&["baseline", "--tsv", s(&one_a), "-k", "2"]);
    assert_eq!(warned.code, 0, "{}", warned.stderr);
    assert!(
        warned
            .stderr
            .contains("class(es) a have no validation sequence"),
        "{}",
        warned.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&warned.stdout).unwrap();
    assert_eq!((v["train"].as_u64(), v["val"].as_u64()), (Some(3), Some(1)));
    bad(
        &["baseline", "--tsv", s(&tsv), "--val-tsv", s(&tsv)],
        "read the same file: validation would measure memorised",
    );
    // Position data: BED chromosome missing from the FASTA, and an unknown BED name.
    let fa = dir.path().join("r.fa");
    std::fs::write(&fa, ">chr1\nACGTACGTACGTACGTACGT\n").unwrap();
    let bedp = dir.path().join("x.bed");
    std::fs::write(&bedp, "chr1\t0\t5\tgene\nchr9\t2\t4\tgene\n").unwrap();
    bad(
        &["train", "-o", o, "--fasta", s(&fa), "--bed", s(&bedp)],
        "chromosome 'chr9' is not in",
    );
    std::fs::write(&bedp, "chr1\t0\t5\tgene\n").unwrap();
    bad(
        &[
            "train",
            "-o",
            o,
            "--fasta",
            s(&fa),
            "--bed",
            s(&bedp),
            "--bed-class",
            "c=CDS",
        ],
        "no BED row is named 'CDS'",
    );
    // One BED name for two classes; the background's name taken by a BED row or a class.
    let with = |extra: &[&'static str]| {
        let mut v = vec!["train", "-o", o, "--fasta", s(&fa), "--bed", s(&bedp)];
        v.extend_from_slice(extra);
        v
    };
    bad(
        &with(&["--bed-class", "a=gene", "--bed-class", "b=gene"]),
        "BED name 'gene' is given to two classes, 'a' and 'b'",
    );
    bad(
        &with(&["--bed-class", "background=gene"]),
        "--bed-class names the class 'background'",
    );
    // An epoch's window positions are drawn up front: their number is bounded.
    bad(
        &with(&["--window", "4", "--windows-per-epoch", "16777217"]),
        "--windows-per-epoch 16777217 is more than the 16777216 supported",
    );
    std::fs::write(&bedp, "chr1\t0\t5\tgene\nchr1\t8\t9\tbackground\n").unwrap();
    bad(&with(&[]), "x.bed: line 2 names the class 'background'");
    std::fs::write(&bedp, "chr1\t0\t50\tgene\n").unwrap();
    bad(
        &["train", "-o", o, "--fasta", s(&fa), "--bed", s(&bedp)],
        "interval chr1 0 50 (BED, 0-based) ends past the end of 'chr1' (20 bases)",
    );
    // A name that cannot be a class name is named with its line, and how to group it.
    std::fs::write(&bedp, "chr1\t0\t5\tgene\nchr1\t8\t9\tA B\n").unwrap();
    bad(
        &with(&[]),
        "x.bed: the name 'A B' (column 4) cannot be a class name, which holds no blanks, '=' or ',' (line 2); choose the classes with --bed-class, one for each class to train (names it does not list become background): this one as --bed-class CLASS='A B'",
    );
    // ... and the hint works.
    let hinted = dir.path().join("hinted");
    let mut args = with(&["--bed-class", "gene=gene", "--bed-class", "ab=A B"]);
    // Into a directory of its own (`with` writes to the one that must stay unmade).
    args[2] = s(&hinted);
    args.extend_from_slice(&["--val-fraction", "0.2", "--window", "8"]);
    args.extend_from_slice(&["--windows-per-epoch", "4", "--epochs", "1"]);
    args.extend(TINY);
    let o2 = run(&args);
    assert_eq!(o2.code, 0, "{}", o2.stderr);
    // A name holding the comma that --bed-class splits at can only be renamed; a quote is
    // quoted for the shell.
    std::fs::write(&bedp, "chr1\t0\t5\tgene\nchr1\t8\t9\ta,b\n").unwrap();
    bad(
        &with(&[]),
        "rename those intervals in column 4: a name with ','",
    );
    // ... as can one with a control character, which no shell quoting here would carry.
    std::fs::write(&bedp, "chr1\t0\t5\tgene\nchr1\t8\t9\tmy\rgene x\n").unwrap();
    bad(&with(&[]), "rename those intervals in column 4");
    std::fs::write(&bedp, "chr1\t0\t5\tgene\nchr1\t8\t9\tit's x\n").unwrap();
    bad(&with(&[]), "--bed-class CLASS='it'\\''s x'");
    // An unnamed interval ('.') is no class of its own; chosen names still train.
    std::fs::write(&bedp, "chr1\t0\t5\tgene\nchr1\t8\t9\t.\n").unwrap();
    bad(
        &with(&[]),
        "x.bed: the interval has no name ('.' in column 4)",
    );
    // A record that is not there: the hint lists those that are.
    bad(&with(&["--records", "chrQ"]), "record 'chrQ' is not in");
    bad(
        &with(&["--records", "chr1,chr1"]),
        "--records names 'chr1' twice",
    );
    bad(&with(&["--records", "chrQ"]), "(1: chr1)");
    // A window no stretch holds: the hint gives the longest, and offers a smaller
    // --val-fraction only where a record is long enough.
    std::fs::write(&bedp, "chr1\t0\t5\tgene\n").unwrap();
    for (window, fix) in [
        ("100", "use --window 18 or less"),
        ("19", "use --window 18 or less, or a smaller --val-fraction"),
    ] {
        let o = run(&with(&["--window", window]));
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.trim_end().ends_with(fix), "{}", o.stderr);
        assert!(
            o.stderr.contains("(the longest is 18 bases)"),
            "{}",
            o.stderr
        );
    }
    // From stdin too: the FASTA is read once (a second read, for the names, found it empty).
    let piped = Command::cargo_bin("genomamba")
        .unwrap()
        .args([
            "train",
            "-o",
            o,
            "--fasta",
            "-",
            "--bed",
            s(&bedp),
            "--records",
            "chrQ",
        ])
        .stdin(std::fs::File::open(&fa).unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(
        err.contains("record 'chrQ' is not in -") && err.contains("(1: chr1)"),
        "{err}"
    );
    // A class that labels no base to train on: an empty interval, or one only in the
    // held-out last stretch (here the last 20% of the 20 bases).
    let split = ["--val-fraction", "0.2"];
    for (rows, needle) in [
        ("chr1\t3\t3\tgene\n", "class 'gene' labels no base;"),
        (
            "chr1\t17\t19\tgene\n",
            "labels no base of the training part of the records, only 2 held out",
        ),
    ] {
        std::fs::write(&bedp, rows).unwrap();
        let mut args = vec!["train", "-o", o, "--fasta", s(&fa), "--bed", s(&bedp)];
        args.extend_from_slice(&split);
        bad(&args, needle);
    }
    // A TSV: a class name that cannot be one, named with its line; a header naming a column
    // twice.
    let tsv = dir.path().join("t.tsv");
    std::fs::write(&tsv, "sequence\tlabel\nACGTAC\tx\nACGTTT\ta b\n").unwrap();
    bad(
        &["train", "-o", o, "--tsv", s(&tsv)],
        "bad class name 'a b' (line 3)",
    );
    std::fs::write(&tsv, "sequence\tlabel\tsequence\nACGTAC\tx\tAAAA\n").unwrap();
    bad(
        &["train", "-o", o, "--tsv", s(&tsv)],
        "the header names the `sequence` column twice",
    );
    // A row with more columns than the header (trailing tabs aside; a header's trailing tab
    // is a nameless column, whose values are taken).
    std::fs::write(&tsv, "sequence\tlabel\nACGTAC\tx\t\nACGTTT\ty\tz\n").unwrap();
    bad(
        &["train", "-o", o, "--tsv", s(&tsv)],
        "3 columns where the header has 2 (line 3)",
    );
    std::fs::write(
        &tsv,
        "sequence\tlabel\t\nACGTAC\tx\tnote\nACGTTT\ty\tz\nACGTAA\tx\tn\nACGGTT\ty\tm\n",
    )
    .unwrap();
    ok(&["baseline", "--tsv", s(&tsv), "--val-fraction", "0.5"]);
    // A header without rows, and rows of one label, each said as what they are.
    for (text, needle) in [
        ("sequence\tlabel\n\n", "has a header but no rows"),
        (
            "sequence\tlabel\nACGTAC\tx\nACGTTT\tx\n",
            "has only one distinct label ('x')",
        ),
    ] {
        std::fs::write(&tsv, text).unwrap();
        bad(&["train", "-o", o, "--tsv", s(&tsv)], needle);
    }
    // A split that leaves no base to validate on (or to train on) is refused.
    std::fs::write(&bedp, "chr1\t2\t5\tgene\n").unwrap();
    for (fraction, needle) in [
        ("0.001", "leaves the validation part empty"),
        ("0.999", "leaves the training part empty"),
    ] {
        bad(
            &[
                "train",
                "-o",
                o,
                "--fasta",
                s(&fa),
                "--bed",
                s(&bedp),
                "--val-fraction",
                fraction,
            ],
            needle,
        );
    }
    // Flags of the other task are refused, not ignored, naming only the flags given (clap
    // listed the whole group).
    bad(
        &two_classes(o, &ca, &cb, &["--window", "100"]),
        "--class cannot be used with --window; leave out --class, or --window",
    );
    // A zero is named by its own flag, not with the window flags --class refuses.
    bad(
        &two_classes(o, &ca, &cb, &["--chunk-size", "0"]),
        "--chunk-size must be at least 1;",
    );
    // --orf-features is of the per-position task: said so, not "--bidirectional required".
    bad(
        &two_classes(o, &ca, &cb, &["--orf-features"]),
        "--class cannot be used with --orf-features;",
    );
    bad(
        &[
            "train",
            "-o",
            o,
            "--fasta",
            s(&fa),
            "--bed",
            s(&bedp),
            "--val-class",
            &ca,
        ],
        "--fasta cannot be used with --val-class;",
    );
    bad(
        &["train", "-o", o, "--class", "a=-", "--class", "b=-"],
        "stdin (-) is given for more than one training file",
    );
    // ... and under another name: it would be read once for each class.
    bad(
        &[
            "train",
            "-o",
            o,
            "--class",
            "a=-",
            "--class",
            "b=/dev/stdin",
        ],
        "stdin and /dev/stdin are the same input, which can be read only once",
    );
    // ... or redirected from a file given by its path too, before or after it.
    for (first, second) in [(ca.as_str(), "plain=-"), ("plain=-", ca.as_str())] {
        let out = Command::cargo_bin("genomamba")
            .unwrap()
            .args(["train", "-o", o, "--class", first, "--class", second])
            .stdin(std::fs::File::open(&a).unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{} is also stdin (-)", s(&a))),
            "{stderr}"
        );
    }
    // A missing class file is named with its class, as given.
    bad(
        &["train", "-o", o, "--class", &ca, "--class", "y=nonexist.fa"],
        "--class y=nonexist.fa: no such file",
    );
    // One only in the training part trains, with a warning that its validation metrics are
    // undefined.
    std::fs::write(&bedp, "chr1\t2\t5\tgene\n").unwrap();
    let trained = dir.path().join("warned");
    let mut args = vec![
        "train",
        "-o",
        s(&trained),
        "--fasta",
        s(&fa),
        "--bed",
        s(&bedp),
    ];
    args.extend_from_slice(&split);
    args.extend_from_slice(&["--window", "8", "--windows-per-epoch", "4", "--epochs", "1"]);
    // --quiet (in TINY) hides progress, not warnings.
    args.extend(TINY);
    let warned = run(&args);
    assert_eq!(warned.code, 0, "{}", warned.stderr);
    assert!(
        warned
            .stderr
            .contains("class(es) gene label no validation base"),
        "{}",
        warned.stderr
    );
    assert!(!out.exists(), "nothing may be written on bad input");
    // An existing output directory is not overwritten without --force.
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "x").unwrap();
    bad(
        &["train", "-o", s(&existing), "--class", &ca, "--class", &cb],
        "already exists",
    );
    // The baseline's report may not replace one of its class files.
    let before = std::fs::read(&b).unwrap();
    bad(
        &["baseline", "--class", &ca, "--class", &cb, "-o", s(&b)],
        "is the input",
    );
    assert_eq!(std::fs::read(&b).unwrap(), before);
}

#[test]
fn training_data_from_stdin_or_a_pipe_is_hashed_as_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 20, 4);
    let cb = format!("plain={}", s(&b));
    let train = |out: &Path, class_a: &str, stdin: Option<&Path>| {
        let mut c = Command::cargo_bin("genomamba").unwrap();
        c.args(["train", "-o", s(out), "--class", class_a, "--class", &cb])
            .args(["--epochs", "1", "--batch-size", "8", "--seed", "2"])
            .args(TINY);
        if let Some(p) = stdin {
            c.stdin(std::fs::File::open(p).unwrap());
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let cfg = config_of(out);
        let data = cfg["provenance"]["data"][0].clone();
        (data, std::fs::read(out.join("model.safetensors")).unwrap())
    };
    let (file, weights) = train(&dir.path().join("f"), &format!("motif={}", s(&a)), None);
    let (piped, piped_weights) = train(&dir.path().join("s"), "motif=-", Some(&a));
    assert_eq!(piped["path"], "-");
    assert_eq!(piped["sha256"], file["sha256"]);
    assert_eq!(piped["bytes"], file["bytes"]);
    assert_eq!(
        piped_weights, weights,
        "the same data trains the same model"
    );
    // A named pipe likewise: its bytes are hashed as they pass, not read a second time.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let writer = {
        let (fifo, bytes) = (fifo.clone(), std::fs::read(&a).unwrap());
        std::thread::spawn(move || std::fs::write(fifo, bytes))
    };
    let (fifo_data, fifo_weights) =
        train(&dir.path().join("p"), &format!("motif={}", s(&fifo)), None);
    writer.join().unwrap().unwrap();
    assert_eq!(fifo_data["sha256"], file["sha256"]);
    assert_eq!(fifo_weights, weights);
}

#[test]
fn early_stopping_ends_the_run() {
    // With a learning rate too small to change any f32 weight, the validation score never
    // improves after the first epoch: patience 1 stops the run after epoch 2 of 6.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_classes(dir.path(), 20, 8);
    let ca = format!("motif={}", s(&a));
    let cb = format!("plain={}", s(&b));
    let out = dir.path().join("es");
    let mut args = vec![
        "train",
        "-o",
        s(&out),
        "--class",
        &ca,
        "--class",
        &cb,
        "--epochs",
        "6",
        "--lr",
        "1e-12",
        "--patience",
        "1",
        "--batch-size",
        "8",
    ];
    // Without --quiet, to see the line that says the run stopped early.
    args.extend(TINY.iter().filter(|a| **a != "--quiet"));
    let o = run(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("stopped early after epoch 2: no better validation auroc for 1 epochs"),
        "{}",
        o.stderr
    );
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    let cfg = config_of(&out);
    assert_eq!(cfg["provenance"]["best_epoch"], 1);
}

#[test]
fn sequences_of_mixed_lengths_train_grouped_by_length_on_request() {
    // Mostly 60 bases, every tenth 2,000: random batches of 32 run at about eight times the
    // sequences' own bases, and `train` says so; grouped, the note goes and the run is
    // recorded as grouped.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let mut files = Vec::new();
    for class in ["gc", "at"] {
        let path = dir.path().join(format!("{class}.fa"));
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..80 {
            let n = if i % 10 == 0 { 2_000 } else { 60 };
            let mut seq = random_dna(&mut rng, n);
            if class == "gc" {
                seq = seq.replace('A', "G");
            }
            writeln!(f, ">{class}{i}\n{seq}").unwrap();
        }
        files.push(format!("{class}={}", s(&path)));
    }
    let mut notes = Vec::new();
    for group in [false, true] {
        let out = dir.path().join(format!("m{group}"));
        let mut args = vec![
            "train",
            "-o",
            s(&out),
            "--class",
            &files[0],
            "--class",
            &files[1],
            "--epochs",
            "1",
        ];
        // Without --quiet, which silences notes.
        args.extend_from_slice(&TINY[..TINY.len() - 1]);
        if group {
            args.push("--group-by-length");
        }
        let o = run(&args);
        assert_eq!(o.code, 0, "{}", o.stderr);
        notes.push(o.stderr.lines().any(|l| l.contains("--group-by-length")));
        let cfg = config_of(&out);
        assert_eq!(cfg["provenance"]["options"]["group_by_length"], group);
        assert!(last_val(&out, "accuracy") > 0.0);
    }
    assert_eq!(notes, [true, false]);
    // Per-position windows all have one length.
    let (fa, bed) = write_labeled(
        dir.path(),
        "c",
        &random_dna(&mut rng, 5_000),
        "c\t10\t900\tx\n",
    );
    bad(
        &[
            "train",
            "-o",
            s(&dir.path().join("p")),
            "--fasta",
            s(&fa),
            "--bed",
            s(&bed),
            "--group-by-length",
        ],
        "--group-by-length applies to sequence labels",
    );
}

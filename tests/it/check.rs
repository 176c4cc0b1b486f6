//! `tollgate check`: every shipped config passes; a broken one lists every error with its
//! position and exits 1.

use std::path::{Path, PathBuf};

use crate::common::run_check;

const CONFIG_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
const BROKEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/broken.yaml");

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_passes_check() {
    let files = yaml_files(Path::new(CONFIG_DIR));
    assert!(!files.is_empty(), "no YAML files in {CONFIG_DIR}");

    for file in files {
        let (code, stdout, stderr) = run_check(&file);
        assert_eq!(
            (code, stdout.trim()),
            (0, "ok"),
            "tollgate check {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            file.display()
        );
    }
}

#[test]
fn broken_config_lists_every_error_with_its_position_and_exits_1() {
    let (code, stdout, stderr) = run_check(Path::new(BROKEN));

    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The errors may go to either stream; each is one `FILE:LINE:COL: message` line.
    let output = format!("{stdout}{stderr}");
    let errors: Vec<(u32, u32, &str)> = output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let rest = line.strip_prefix(BROKEN).and_then(|r| r.strip_prefix(':'));
            let rest = rest.unwrap_or_else(|| panic!("not FILE:LINE:COL: message: {line:?}"));
            let mut parts = rest.splitn(3, ':');
            let line_no = parts.next().and_then(|n| n.parse().ok());
            let col = parts.next().and_then(|n| n.parse().ok());
            let message = parts.next().and_then(|m| m.strip_prefix(' '));
            match (line_no, col, message) {
                (Some(l), Some(c), Some(m)) if !m.is_empty() => (l, c, m),
                _ => panic!("not FILE:LINE:COL: message: {line:?}"),
            }
        })
        .collect();

    assert_eq!(
        errors.len(),
        3,
        "one line per error, three errors:\n{output}"
    );
    let (line, col, message) = errors[0];
    assert_eq!((line, col), (3, 3), "the unknown key `bogus`:\n{output}");
    assert!(message.contains("bogus"), "{message}");
    let period = errors
        .iter()
        .find(|e| e.0 == 12)
        .unwrap_or_else(|| panic!("no error on line 12:\n{output}"));
    assert!(
        period.2.contains("fortnight"),
        "the bad period is named: {}",
        period.2
    );
    let upstream = errors
        .iter()
        .find(|e| e.0 == 16)
        .unwrap_or_else(|| panic!("no error on line 16:\n{output}"));
    assert_eq!(upstream.1, 15, "the position of `nowhere`:\n{output}");
    assert!(
        upstream.2.contains("nowhere"),
        "the unknown upstream is named: {}",
        upstream.2
    );
}

#[test]
fn no_resolve_checks_everything_but_the_host_names_of_targets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    // `.invalid` never resolves (RFC 6761); the plan name is wrong on purpose.
    std::fs::write(
        &file,
        "server: { listen: \"127.0.0.1:8080\" }\nstore: { kind: embedded, path: ./u.db }\nupstreams:\n  product: { targets: [\"api.tollgate.invalid:3000\"] }\nplans: { free: {} }\nroutes: [{ name: r, match: { path: / }, upstream: product, auth: none }]\n",
    )
    .unwrap();
    let (code, stdout, _) = run_check(&file);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("`api.tollgate.invalid` could not be resolved"),
        "{stdout}"
    );

    let no_resolve = |file: &Path| {
        let out = std::process::Command::new(crate::common::gateway::BIN)
            .args(["check", "--no-resolve", "--config"])
            .arg(file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(no_resolve(&file), (Some(0), "ok\n".to_string()));
    // Every other mistake is still found.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("upstream: product", "upstream: prodcut");
    std::fs::write(&file, text).unwrap();
    let (code, stdout) = no_resolve(&file);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("prodcut"), "{stdout}");
}

//! Command-line misuse: a clear message and exit code 2 (README's table), whatever the
//! mistake, before anything is touched.

mod common;

use common::run;

#[test]
fn misuse_is_exit_code_2_with_a_message() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_str().unwrap();
    for args in [
        vec!["frobnicate"],
        vec!["eject"],
        vec!["eject", p, "--wait", "soon"],
        vec!["journal", "status", "--interval", "often"],
        vec!["completions", "tcsh"],
        vec!["service", "install", "--package"],
        vec!["dest", "add", "home"],
        vec!["dest", "add", "home", p, "--mode", "copy"],
        vec!["dest", "add", "home", p, "--connections", "0"],
        vec!["dest", "add", "home", p, "--warn-after", "a while"],
        vec!["restore", "--to", p],
        vec!["forget", "home", "--keep-last", "-1"],
        vec!["mount", p],
    ] {
        let out = run(&args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("error:") && (err.contains("Usage:") || err.contains("help")),
            "{args:?} gave no usable message: {err}"
        );
    }
    // Nothing was made along the way.
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}

#[test]
fn help_and_version_succeed() {
    for args in [vec!["--help"], vec!["--version"], vec!["eject", "--help"]] {
        let out = run(&args, None);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}

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

#[test]
fn the_remembered_key_is_readable_by_its_owner_only_and_never_on_the_drive() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("config");
    let pocket = t.path().join("pocket");
    let pass = t.path().join("pass");
    std::fs::write(&pass, "a passphrase for this test\n").unwrap();
    let env = [("XDG_CONFIG_HOME", home.to_str().unwrap().to_owned())];
    let ok = |args: &[&str]| {
        let out = common::run_env(args, None, &env);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["init", pocket.to_str().unwrap()]);
    ok(&[
        "dest",
        "add",
        "home",
        t.path().join("vault").to_str().unwrap(),
        "--pocket",
        pocket.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    let keys: Vec<_> = std::fs::read_dir(home.join("backpocket/keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mode = std::fs::metadata(&keys[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the remembered key is mode {mode:o}");
    let key_hex = std::fs::read_to_string(&keys[0]).unwrap();
    // The drive holds the key only sealed: not in the config, the journal or anywhere else.
    let mut stack = vec![pocket.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let b = std::fs::read(&p).unwrap();
                let needle = key_hex.trim().as_bytes();
                assert!(
                    !b.windows(needle.len()).any(|w| w == needle),
                    "{} holds the key",
                    p.display()
                );
            }
        }
    }
}

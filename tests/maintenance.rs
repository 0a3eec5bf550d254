//! Maintenance cut at each of its crash points, through the real binary: the vault opens,
//! restores exactly and verifies clean after each, and the next run finishes the job.
//! Needs the `fault-injection` build (CI's), where `BACKPOCKET_CRASH_AT` kills the process.

mod common;

use std::path::Path;

use common::backed::{ok_out, pseudo_random, Backed};
use common::{assert_same_tree, exact_tree, run_env};

fn count(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

fn copy(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn maintenance_cut_at_every_point_loses_nothing_and_is_finished_next_time() {
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("vault");
    b.dest("v", &vault, "vault");
    let root = &b.pocket.root;
    let args = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.extend(["--pocket", b.pocket.p(), "--passphrase-file", b.pf()].map(String::from));
        v
    };
    let bp = |cmd: &[&str], env: &[(&str, String)]| {
        let a = args(cmd);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_env(&a, None, env)
    };
    // Many small drains: a segment each, and small packs.
    std::fs::create_dir_all(root.join("docs")).unwrap();
    for i in 0..40u64 {
        match i % 4 {
            0 => std::fs::write(root.join(format!("docs/n{i}.txt")), format!("{i}")).unwrap(),
            1 => std::fs::write(root.join("big.bin"), pseudo_random(200_000, i)).unwrap(),
            2 => std::fs::rename(
                root.join(format!("docs/n{}.txt", i - 2)),
                root.join(format!("docs/m{i}.txt")),
            )
            .unwrap(),
            _ => std::fs::write(root.join("docs/report.txt"), format!("draft {i}")).unwrap(),
        }
        ok_out(&bp(&["sync"], &[]));
    }
    let want = exact_tree(root);
    let pristine = b.pocket.tmp.path().join("pristine");
    copy(&vault, &pristine);
    let objects_before = count(&vault);

    for (n, point) in [
        "maintain-emptied",
        "maintain-written",
        "maintain-trashed",
        "maintain-deleting",
    ]
    .iter()
    .enumerate()
    {
        copy(&pristine, &vault);
        let out = bp(
            &["maintain", "v", "--grace", "0s"],
            &[("BACKPOCKET_CRASH_AT", format!("{point}:1"))],
        );
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "{point}: maintenance was not killed there: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Cut there: the vault restores exactly and verifies clean.
        let into = format!("cut-{n}");
        b.assert_restores("v", &want, &into);
        // The next run finishes the job.
        ok_out(&bp(&["maintain", "v", "--grace", "0s"], &[]));
        let into = format!("finished-{n}");
        b.assert_restores("v", &want, &into);
        let after = count(&vault);
        assert!(
            after * 4 < objects_before,
            "{point}: {after} objects left of {objects_before}"
        );
        assert_eq!(count(&vault.join("trash")), 0, "{point}: trash left");
        assert_eq!(count(&vault.join("locks")), 0, "{point}: a lease left");
        // And the pocket drains on into it.
        std::fs::write(root.join(format!("after-{n}")), b"more").unwrap();
        ok_out(&bp(&["sync"], &[]));
        let now = exact_tree(root);
        let into = b.pocket.tmp.path().join(format!("after-{n}"));
        ok_out(&b.restore("v", &into));
        assert_same_tree(&now, &exact_tree(&into));
        std::fs::remove_file(root.join(format!("after-{n}"))).unwrap();
        ok_out(&bp(&["sync"], &[]));
        // The pocket remembers the vault's head: a fresh copy of the pristine vault is behind
        // it now, so forget what this round wrote.
        let state = root.join(".backpocket/dest/v.json");
        let _ = std::fs::remove_file(state);
    }
}

#[test]
fn the_mount_maintains_its_vault_when_idle() {
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("vault");
    b.dest("v", &vault, "vault");
    let prefix = [
        "env".to_owned(),
        "BACKPOCKET_MAINTAIN_IDLE_SECS=2".to_owned(),
        "BACKPOCKET_MAINTAIN_GRACE_SECS=0".to_owned(),
    ];
    let m = common::Mounted::start_with(
        &b.pocket.root,
        &b.pocket.mnt,
        &["--passphrase-file", b.pf()],
        &prefix,
    );
    // Saves a moment apart: a drain each, a log segment each.
    for i in 0..70 {
        std::fs::write(b.pocket.mnt.join(format!("doc-{i}.txt")), format!("{i}")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(60));
    }
    b.wait_drained(&m, std::time::Duration::from_secs(60));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = count(&vault.join("log")) + count(&vault.join("checkpoints"));
        if log <= 3 && count(&vault.join("trash")) == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mount did not maintain its vault: {log} log objects"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    b.assert_restores("v", &want, "restored");
}

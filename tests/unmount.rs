//! The unmount against a loaded machine.

mod common;

use common::backed::Backed;

/// Mounted and unmounted at once, again and again, with a vault (the mount then runs the pull
/// of other devices' changes beside the drain): the unmount never finds the folder busy when
/// nothing in it is open. CI's endurance run once failed so: the pull, waiting for the mount
/// to serve, looked at the mountpoint every 100 ms, and a look in flight held it busy.
///
/// A test program of its own: it loads the machine on purpose, and cargo runs test programs
/// one after the other, so no other test is starved by it.
#[test]
fn a_mount_with_a_vault_unmounts_the_moment_it_is_ready() {
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("vault");
    std::fs::create_dir(&vault).unwrap();
    b.dest("v", &vault, "vault");
    // A busy machine (as CI's is) preempts a thread in the middle of its look.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let cycles = std::panic::catch_unwind(|| {
        for i in 0..25 {
            let m = b.mount();
            std::fs::create_dir(m.mnt.join(format!("d{i}"))).unwrap();
            m.unmount();
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    if let Err(e) = cycles {
        std::panic::resume_unwind(e);
    }
}

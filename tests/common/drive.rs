//! A drive for the tests that pull it out or cut its power: a loop-mounted filesystem image
//! (root only), unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loop-mounted filesystem image, unmounted and detached on drop. exFAT is mounted through
/// exfat-fuse (this kernel has no exfat module; a user's kernel driver behaves the same for
/// what the tests look at).
pub struct Drive {
    pub image: PathBuf,
    pub dir: PathBuf,
    mounted: bool,
    /// The loop device a FUSE driver reads (the kernel's own drivers attach theirs).
    loop_dev: Option<PathBuf>,
    /// Pulled out ([`Self::pull`]) and not yet plugged back in.
    pulled: std::cell::Cell<bool>,
}

impl Drive {
    pub fn new(tmp: &Path, fs_type: &str, size_mb: u64) -> Drive {
        let image = tmp.join(format!("{fs_type}.img"));
        let dir = tmp.join("drive");
        std::fs::create_dir_all(&dir).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(size_mb << 20).unwrap();
        drop(f);
        let mut mkfs = Command::new(format!("mkfs.{fs_type}"));
        if fs_type != "exfat" {
            mkfs.arg("-q");
        }
        let mkfs = mkfs.arg(&image).output().unwrap();
        assert!(mkfs.status.success(), "{}", stderr(&mkfs));
        let loop_dev = (fs_type == "exfat").then(|| {
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .arg(&image)
                .output()
                .unwrap();
            assert!(out.status.success(), "losetup: {}", stderr(&out));
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        });
        let mut d = Drive {
            image,
            dir,
            mounted: false,
            loop_dev,
            pulled: std::cell::Cell::new(false),
        };
        d.mount();
        d
    }

    pub fn mount(&mut self) {
        let args = self.mount_args();
        let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "mount loop: {}", stderr(&out));
        self.mounted = true;
    }

    pub fn umount(&mut self) {
        let out = Command::new("umount").arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "umount: {}", stderr(&out));
        self.mounted = false;
    }

    /// Pulled out and plugged back in: unmounted (the log replays at the next mount).
    pub fn replug(&self) {
        let out = Command::new("umount").arg(&self.dir).output().unwrap();
        if !out.status.success() {
            // A FUSE driver that was killed ([`Self::pull`]) leaves a mount that only a lazy
            // unmount takes away.
            let lazy = Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .output()
                .unwrap();
            assert!(lazy.status.success(), "umount: {}", stderr(&out));
        }
        if let (Some(dev), true) = (&self.loop_dev, self.pulled.replace(false)) {
            // exFAT has no journal: a drive pulled mid-write is repaired when plugged in again,
            // as Windows and macOS offer to (exfat-fuse mounts it as it is and may fail later).
            let fsck = Command::new("fsck.exfat")
                .arg("-y")
                .arg(dev)
                .output()
                .unwrap();
            assert!(
                matches!(fsck.status.code(), Some(0 | 1)),
                "fsck.exfat: {}{}",
                String::from_utf8_lossy(&fsck.stdout),
                stderr(&fsck)
            );
        }
        let args = self.mount_args();
        let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }

    /// The drive pulled out: every I/O fails from now on. XFS is shut down without flushing
    /// its log (a power cut); a drive read through a FUSE driver (exFAT) loses its driver to
    /// kill -9, with whatever the driver had not written to the device yet.
    pub fn pull(&self) {
        let Some(dev) = &self.loop_dev else {
            return self.shutdown();
        };
        self.pulled.set(true);
        let pattern = format!(
            "^mount.exfat-fuse {} {}$",
            dev.display(),
            self.dir.display()
        );
        let out = Command::new("pkill")
            .args(["-9", "-f", &pattern])
            .output()
            .unwrap();
        assert!(out.status.success(), "pkill {pattern}: {}", stderr(&out));
    }

    fn mount_args(&self) -> Vec<PathBuf> {
        if let Some(dev) = &self.loop_dev {
            return vec!["mount.exfat-fuse".into(), dev.clone(), self.dir.clone()];
        }
        vec![
            "mount".into(),
            "-o".into(),
            "loop".into(),
            self.image.clone(),
            self.dir.clone(),
        ]
    }

    /// [`Self::shutdown`] within microseconds, from this process (XFS's going-down ioctl, the
    /// log not flushed): for a cut that must come before anything else can reach the drive.
    pub fn shutdown_now(&self) {
        use std::os::fd::AsRawFd;
        // _IOR('X', 125, __u32); XFS_FSOP_GOING_FLAGS_NOLOGFLUSH.
        const XFS_IOC_GOINGDOWN: libc::c_ulong = 0x8004_587d;
        let flags: u32 = 2;
        let dir = std::fs::File::open(&self.dir).unwrap();
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), XFS_IOC_GOINGDOWN, &flags) };
        assert_eq!(
            rc,
            0,
            "XFS_IOC_GOINGDOWN: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The drive goes away: every I/O fails with EIO. Without `-f` the log is not flushed,
    /// as in a power cut.
    pub fn shutdown(&self) {
        let out = Command::new("xfs_io")
            .args(["-x", "-c", "shutdown"])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "xfs_io shutdown: {}", stderr(&out));
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

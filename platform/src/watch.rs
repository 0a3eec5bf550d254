//! Changes the replicator reacts to at once: the network (links, addresses and routes, from
//! the kernel's rtnetlink), and the mount table (a backup disk plugged back in, a share
//! mounted). Elsewhere than Linux nothing is watched yet and the replicator relies on its
//! backoff.

use std::time::Duration;

/// Changes as the kernel reports them: network links, addresses and routes (rtnetlink), so a
/// destination waiting for the office network starts within moments of arriving there; and
/// the mount table, so a backup disk plugged back in (or a share mounted) is tried at once
/// instead of at the end of a long backoff.
#[derive(Debug)]
pub struct ChangeWatch {
    #[cfg(unix)]
    netlink: Option<rustix::fd::OwnedFd>,
    #[cfg(unix)]
    mounts: Option<std::fs::File>,
}

#[cfg(not(unix))]
impl ChangeWatch {
    /// Nothing to watch here yet: the replicator relies on its backoff.
    pub fn open() -> Option<ChangeWatch> {
        None
    }

    pub fn wait(&mut self, timeout: Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }
}

#[cfg(unix)]
impl ChangeWatch {
    /// None where neither can be watched (the replicator then relies on its backoff).
    pub fn open() -> Option<ChangeWatch> {
        let w = ChangeWatch {
            netlink: open_netlink(),
            mounts: std::fs::File::open("/proc/self/mountinfo").ok(),
        };
        (w.netlink.is_some() || w.mounts.is_some()).then_some(w)
    }

    /// Waits up to `timeout` for a change; true when one came (the burst that follows one
    /// change is taken too).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let changed = self.poll(timeout);
        if changed {
            // One change comes as several messages; wake once.
            while self.poll(Duration::from_millis(50)) {}
        }
        changed
    }

    fn poll(&mut self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = Vec::with_capacity(2);
        if let Some(fd) = &self.netlink {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        if let Some(f) = &self.mounts {
            // The mount table signals a change with POLLPRI (and POLLERR).
            fds.push(PollFd::new(f, PollFlags::PRI));
        }
        if !matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
            return false;
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        let mut i = 0;
        if let Some(fd) = &self.netlink {
            if ready[i] {
                let mut buf = [0u8; 16384];
                let _ = rustix::net::recv(fd, &mut buf, rustix::net::RecvFlags::DONTWAIT);
            }
            i += 1;
        }
        if let Some(f) = &mut self.mounts {
            if ready[i] {
                // Reading the table again from its start clears the event.
                use std::io::{Read, Seek};
                let _ = f.seek(std::io::SeekFrom::Start(0));
                let _ = std::io::copy(&mut f.by_ref().take(16 << 20), &mut std::io::sink());
            }
        }
        true
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn open_netlink() -> Option<rustix::fd::OwnedFd> {
    None
}

#[cfg(target_os = "linux")]
fn open_netlink() -> Option<rustix::fd::OwnedFd> {
    use rustix::net::{netlink, socket_with, AddressFamily, SocketFlags, SocketType};
    let fd = socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None, // NETLINK_ROUTE
    )
    .ok()?;
    // RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
    let groups = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;
    rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, groups)).ok()?;
    Some(fd)
}

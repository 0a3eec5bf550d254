#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine (run as root): FUSE, xfs tools
# for the power-cut tests, exFAT tools and its FUSE driver, attr, acl and rsync (the journal's truth test), the `tests` user
# pjdfstest wants, and pjdfstest itself;
# OpenSSH and Garage (an S3 server) for the remote-destination tests; Prosody (XMPP) for
# the devices' push; cargo-deb for the package
# check; mingw-w64, wine and the Windows target for the Windows cross-check.
set -euo pipefail

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v xfs_io >/dev/null || need+=(xfsprogs)
command -v setfattr >/dev/null || need+=(attr)
# The journal's truth test writes ACLs and copies trees with the tools users copy with.
command -v setfacl >/dev/null || need+=(acl)
command -v rsync >/dev/null || need+=(rsync)
command -v setpriv >/dev/null || need+=(util-linux)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
# Pockets on the drives users carry: real exFAT images, mounted through exfat-fuse (the
# kernel here has no exfat module), and losetup to attach them.
command -v mkfs.exfat >/dev/null || need+=(exfatprogs)
command -v fsck.exfat >/dev/null || need+=(exfatprogs)
command -v mount.exfat-fuse >/dev/null || need+=(exfat-fuse)
# A pulled exFAT drive is its FUSE driver killed (pkill) and repaired when plugged back in.
command -v pkill >/dev/null || need+=(procps)
command -v losetup >/dev/null || need+=(mount)
# The backup tests mount tmpfs and bind mounts as destinations that fill up and get unplugged.
command -v mount >/dev/null || need+=(mount)
command -v mkfifo >/dev/null || need+=(coreutils)
# The remote-destination tests start their own sshd (and drive ssh), and put the servers in a
# network namespace behind a veth pair.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ip >/dev/null || need+=(iproute2)
# The devices' push tests start their own XMPP server, with a certificate from their own CA.
command -v prosody >/dev/null || need+=(prosody)
command -v openssl >/dev/null || need+=(openssl)
# A device whose clock is hours off is a mount run under libfaketime.
command -v faketime >/dev/null || need+=(faketime)
# The package check (dpkg-deb, dpkg) and the Windows cross-check (mingw-w64 links the test
# programs, wine runs them).
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
command -v wine >/dev/null || need+=(wine wine64)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# What the fuse package's udev rule does on a machine that runs udev: let users open
# /dev/fuse (fusermount3 is set-uid and checks the rest).
if [ -c /dev/fuse ]; then
    chmod 0666 /dev/fuse
else
    echo "WARNING: /dev/fuse is missing: the mount tests cannot run here" >&2
fi

# pjdfstest switches to these users.
id tests >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin tests
getent group nogroup >/dev/null || groupadd nogroup

if ! command -v pjdfstest >/dev/null; then
    echo "installing pjdfstest (cargo install, about a minute)"
    cargo install pjdfstest --version 0.2.2 --locked --quiet
fi

# Garage, the S3 server the remote tests start (about 12 minutes to build on a fresh machine,
# so only when it is not on PATH already). Its own target folder, so it never fights over
# ours.
if ! command -v garage >/dev/null; then
    echo "installing garage (cargo install, about 12 minutes)"
    CARGO_TARGET_DIR="${TMPDIR:-/tmp}/garage-build" cargo install garage --version 2.5.0 --locked \
        --no-default-features --features bundled-libs,sqlite --quiet
    rm -rf "${TMPDIR:-/tmp}/garage-build"
fi
# cargo-deb builds the .deb the package check installs; the Windows target is rustup's.
command -v cargo-deb >/dev/null || cargo install cargo-deb --version 3.8.0 --locked --quiet
rustup target list --installed | grep -qx x86_64-pc-windows-gnu \
    || rustup target add x86_64-pc-windows-gnu

# sshd as root wants its privilege-separation folder.
mkdir -p /run/sshd

//! When a destination may be used (`--when`): on given networks, with a given gateway, when a
//! host answers, off metered links, within a schedule. Every condition must hold; while one
//! does not, the destination waits (and `journal status` says for what) instead of failing
//! and backing off. Conditions are cheap to check (interface addresses, the route and
//! neighbour tables; one TCP connect for `host=`) and are checked again on every network
//! change the kernel reports (see [`ChangeWatch`]).

use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use ipnet::IpNet;

use crate::error::{Error, Result};

/// One condition of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// No condition: try whenever there is something to send (the default; an unreachable
    /// destination is retried with backoff).
    Always,
    /// A local address, on an interface that is up, inside one of these ranges.
    Network(Vec<IpNet>),
    /// The default gateway has this hardware address (a given office or home router).
    Gateway([u8; 6]),
    /// A TCP connection to this host and port succeeds.
    Host(String, u16),
    /// The link is not metered (as NetworkManager reports it; where nothing can tell, links
    /// are taken as not metered).
    NotMetered,
    /// Within these hours, on these days (local time).
    Schedule(Schedule),
}

/// Days and hours: `Mon-Fri 09:00-18:00`, `22:00-06:00` (every day, across midnight), `Sat,Sun`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Bit 0 = Sunday .. bit 6 = Saturday (as `tm_wday`).
    days: u8,
    /// Minutes since midnight; `from == to` means the whole day.
    from: u16,
    to: u16,
    text: String,
}

/// The conditions of one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    conditions: Vec<Condition>,
}

impl Policy {
    /// Reads `--when` values; each holds one or more conditions separated by commas
    /// (`network=10.20.0.0/16,not-metered`). A schedule's own commas (`Sat,Sun`) stay inside
    /// it: a piece that does not start a condition continues the one before.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Policy> {
        const STARTS: [&str; 7] = [
            "always",
            "reachable",
            "network=",
            "gateway=",
            "host=",
            "not-metered",
            "schedule=",
        ];
        let mut pieces: Vec<String> = Vec::new();
        for v in values {
            for (i, piece) in v.as_ref().split(',').enumerate() {
                let starts = STARTS.iter().any(|s| piece.trim_start().starts_with(s));
                match pieces.last_mut() {
                    Some(last) if i > 0 && !starts => {
                        last.push(',');
                        last.push_str(piece);
                    }
                    _ => pieces.push(piece.to_owned()),
                }
            }
        }
        let mut conditions = Vec::new();
        for p in pieces {
            let c = Condition::parse(&p)?;
            if c != Condition::Always {
                conditions.push(c);
            }
        }
        Ok(Policy { conditions })
    }

    /// A policy that never holds: for a config whose conditions no longer parse.
    pub fn never() -> Policy {
        Policy {
            conditions: vec![Condition::Network(vec!["0.0.0.0/32"
                .parse()
                .expect("a range")])],
        }
    }

    pub fn is_always(&self) -> bool {
        self.conditions.is_empty()
    }

    /// None when the destination may be used now; otherwise what it waits for, in words
    /// (`network 10.20.0.0/16`).
    pub fn waiting_for(&self) -> Option<String> {
        self.conditions
            .iter()
            .find(|c| !c.holds())
            .map(Condition::describe)
    }
}

impl Policy {
    /// As [`Policy::waiting_for`], without the checks that cost a connection (`host=`): for
    /// deciding at once, on a network change, whether transfers in flight must stop.
    pub fn quick_waiting_for(&self) -> Option<String> {
        self.conditions
            .iter()
            .filter(|c| !matches!(c, Condition::Host(..)))
            .find(|c| !c.holds())
            .map(Condition::describe)
    }
}

impl Condition {
    pub fn parse(s: &str) -> Result<Condition> {
        let s = s.trim();
        let (k, v) = s.split_once('=').unwrap_or((s, ""));
        let bad = |why: String| {
            Error::Format(format!(
                "--when {s:?}: {why}; use always, reachable, network=CIDR, gateway=MAC, host=NAME:PORT, not-metered or schedule='Mon-Fri 09:00-18:00'"
            ))
        };
        // Where the interface and gateway tables cannot be read, a condition on them could
        // never hold: refuse it when added rather than wait forever.
        if matches!(k, "network" | "gateway") && !cfg!(unix) {
            return Err(bad(format!(
                "{k}= cannot be checked on this system yet (host=, schedule= and not-metered can)"
            )));
        }
        Ok(match (k, v) {
            ("always" | "reachable", "") => Condition::Always,
            ("network", v) => {
                let nets = v
                    .split('|')
                    .map(|r| {
                        r.parse::<IpNet>()
                            .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                            .map(|n| n.trunc())
                            .map_err(|_| {
                                bad(format!(
                                    "{r:?} is not an address range such as 10.20.0.0/16"
                                ))
                            })
                    })
                    .collect::<Result<Vec<IpNet>>>()?;
                Condition::Network(nets)
            }
            ("gateway", v) => Condition::Gateway(parse_mac(v).ok_or_else(|| {
                bad(format!(
                    "{v:?} is not a hardware address such as 52:54:00:12:34:56"
                ))
            })?),
            ("host", v) => {
                let (h, p) = v
                    .rsplit_once(':')
                    .ok_or_else(|| bad("give the port too, as host=nas.local:22".into()))?;
                let port = p.parse().map_err(|_| bad(format!("{p:?} is not a port")))?;
                let h = h.trim_start_matches('[').trim_end_matches(']');
                if h.is_empty() {
                    return Err(bad("no host named".into()));
                }
                Condition::Host(h.to_owned(), port)
            }
            ("not-metered", "") => Condition::NotMetered,
            ("schedule", v) => Condition::Schedule(Schedule::parse(v).map_err(bad)?),
            _ => return Err(bad("not a condition backpocket knows".into())),
        })
    }

    fn holds(&self) -> bool {
        match self {
            Condition::Always => true,
            Condition::Network(nets) => up_addresses()
                .iter()
                .any(|a| nets.iter().any(|n| n.contains(a))),
            Condition::Gateway(mac) => gateway_macs().contains(mac),
            Condition::Host(h, p) => host_answers(h, *p, Duration::from_secs(3)),
            Condition::NotMetered => !metered(),
            Condition::Schedule(s) => s.contains_now(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Condition::Always => "nothing".into(),
            Condition::Network(nets) => format!(
                "network {}",
                nets.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            Condition::Gateway(m) => format!("gateway {}", format_mac(m)),
            Condition::Host(h, p) => format!("{h}:{p} to answer"),
            Condition::NotMetered => "a link that is not metered".into(),
            Condition::Schedule(s) => format!("schedule {}", s.text),
        }
    }
}

impl Schedule {
    fn parse(v: &str) -> std::result::Result<Schedule, String> {
        const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let day = |d: &str| {
            let d = d.to_ascii_lowercase();
            DAYS.iter()
                .position(|x| d.starts_with(x) && x.len() <= d.len())
                .ok_or_else(|| format!("{d:?} is not a day (Mon, Tue, ...)"))
        };
        let mut days = 0u8;
        let mut hours = None;
        for part in v.split_whitespace() {
            if part.contains(':') {
                let (a, b) = part
                    .split_once('-')
                    .ok_or_else(|| format!("{part:?}: give hours as 09:00-18:00"))?;
                hours = Some((parse_hm(a)?, parse_hm(b)?));
            } else {
                for item in part.split(',').filter(|x| !x.is_empty()) {
                    match item.split_once('-') {
                        Some((a, b)) => {
                            let (a, b) = (day(a)?, day(b)?);
                            let mut d = a;
                            loop {
                                days |= 1 << d;
                                if d == b {
                                    break;
                                }
                                d = (d + 1) % 7;
                            }
                        }
                        None => days |= 1 << day(item)?,
                    }
                }
            }
        }
        if days == 0 && hours.is_none() {
            return Err("an empty schedule".into());
        }
        let (from, to) = hours.unwrap_or((0, 0));
        Ok(Schedule {
            days: if days == 0 { 0x7f } else { days },
            from,
            to,
            text: v.trim().to_owned(),
        })
    }

    /// Whether (weekday, minute of the day) falls inside. A span across midnight belongs to
    /// the day it starts on.
    fn contains(&self, wday: u8, minute: u16) -> bool {
        let on = |d: u8| self.days & (1 << (d % 7)) != 0;
        if self.from == self.to {
            on(wday)
        } else if self.from < self.to {
            on(wday) && (self.from..self.to).contains(&minute)
        } else {
            (on(wday) && minute >= self.from) || (on((wday + 6) % 7) && minute < self.to)
        }
    }

    fn contains_now(&self) -> bool {
        let (wday, minute) = local_now();
        self.contains(wday, minute)
    }
}

fn parse_hm(s: &str) -> std::result::Result<u16, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not a time"))?;
    match (h.parse::<u16>(), m.parse::<u16>()) {
        (Ok(h), Ok(m)) if h <= 24 && m < 60 && h * 60 + m <= 24 * 60 => {
            Ok((h * 60 + m) % (24 * 60))
        }
        _ => Err(format!("{s:?} is not a time such as 09:30")),
    }
}

/// The local weekday (0 = Sunday) and minute of the day.
#[cfg(unix)]
fn local_now() -> (u8, u16) {
    // SAFETY: time(NULL) and localtime_r with a valid output struct are always sound.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        (tm.tm_wday as u8, (tm.tm_hour * 60 + tm.tm_min) as u16)
    }
}

#[cfg(windows)]
fn local_now() -> (u8, u16) {
    use windows_sys::Win32::System::SystemInformation::GetLocalTime;
    // SAFETY: GetLocalTime fills the struct it is given; all-zero is a valid SYSTEMTIME.
    let st = unsafe {
        let mut st = std::mem::zeroed();
        GetLocalTime(&mut st);
        st
    };
    (st.wDayOfWeek as u8, st.wHour * 60 + st.wMinute)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Addresses of interfaces that are up and have a carrier: an address stays on an interface
/// whose cable is out, and it must not count as being on that network.
#[cfg(not(unix))]
fn up_addresses() -> Vec<IpAddr> {
    // `network=` is refused when added on such systems.
    Vec::new()
}

#[cfg(unix)]
fn up_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut p = ifap;
        while !p.is_null() {
            let ifa = &*p;
            let flags = ifa.ifa_flags;
            let up = flags & (libc::IFF_UP as u32) != 0 && flags & (libc::IFF_RUNNING as u32) != 0;
            if up && !ifa.ifa_addr.is_null() {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

/// Hardware addresses of the default gateways, from the kernel's route and neighbour tables.
fn gateway_macs() -> Vec<[u8; 6]> {
    gateway_macs_from(
        &std::fs::read_to_string("/proc/net/route").unwrap_or_default(),
        &std::fs::read_to_string("/proc/net/arp").unwrap_or_default(),
    )
}

fn gateway_macs_from(routes: &str, arp: &str) -> Vec<[u8; 6]> {
    let gateways: Vec<String> = routes
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags ...; a default route has destination 0. The
            // kernel prints the address's bytes as a number in this machine's byte order.
            (f.len() > 3 && f[1] == "00000000" && f[2] != "00000000").then(|| {
                let g = u32::from_str_radix(f[2], 16).unwrap_or(0);
                std::net::Ipv4Addr::from(g.to_ne_bytes()).to_string()
            })
        })
        .collect();
    arp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // IP HWtype Flags HWaddress Mask Device; flags 0x0 means incomplete.
            (f.len() > 3 && gateways.iter().any(|g| g == f[0]) && f[2] != "0x0")
                .then(|| parse_mac(f[3]))
                .flatten()
        })
        .collect()
}

fn host_answers(host: &str, port: u16, timeout: Duration) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, timeout).is_ok())
}

/// Whether NetworkManager says the primary connection is metered; false where it does not
/// run (nothing else on Linux can tell).
fn metered() -> bool {
    let out = std::process::Command::new("nmcli")
        .args(["-t", "-g", "GENERAL.METERED", "general"])
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
            v.trim().starts_with("yes")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(unix))]
    fn conditions_on_interfaces_are_refused_where_they_cannot_be_checked() {
        let e = Condition::parse("network=10.0.0.0/8")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be checked on this system"), "{e}");
        assert!(Condition::parse("gateway=52:54:00:12:34:56").is_err());
        assert!(Condition::parse("host=nas.local:22").is_ok());
    }

    #[test]
    #[cfg(unix)]
    fn conditions_parse_and_refuse_with_the_usage() {
        let p = Policy::parse(&[
            "network=10.20.0.0/16",
            "gateway=52:54:00:AB:cd:01",
            "host=nas.local:22",
            "not-metered",
            "schedule=Mon-Fri 09:00-18:00",
            "always",
        ])
        .unwrap();
        assert_eq!(p.conditions.len(), 5);
        assert_eq!(
            p.conditions[0],
            Condition::Network(vec!["10.20.0.0/16".parse().unwrap()])
        );
        // Several conditions in one value, several ranges in one condition, and a
        // schedule's own commas, as DESIGN's command-line rules give them.
        let several = Policy::parse(&[
            "network=10.20.0.0/16|192.168.7.0/24,not-metered,schedule=Sat,Sun 22:00-06:00",
        ])
        .unwrap();
        assert_eq!(
            several.conditions,
            vec![
                Condition::Network(vec![
                    "10.20.0.0/16".parse().unwrap(),
                    "192.168.7.0/24".parse().unwrap()
                ]),
                Condition::NotMetered,
                Condition::Schedule(Schedule::parse("Sat,Sun 22:00-06:00").unwrap()),
            ]
        );
        assert!(Policy::parse(&["network=10.20.0.0/16|nowhere"]).is_err());
        assert_eq!(
            p.conditions[1],
            Condition::Gateway([0x52, 0x54, 0, 0xab, 0xcd, 1])
        );
        assert_eq!(p.conditions[2], Condition::Host("nas.local".into(), 22));
        assert!(Policy::parse(&["reachable"]).unwrap().is_always());
        for bad in [
            "network=10.20.0.0/33",
            "gateway=52:54:00",
            "host=nas.local",
            "host=:22",
            "schedule=Funday",
            "schedule=25:00-26:00",
            "sometimes",
        ] {
            let e = Policy::parse(&[bad]).unwrap_err().to_string();
            assert!(e.contains("network=CIDR"), "{bad}: {e}");
        }
    }

    #[test]
    fn schedules() {
        let s = Schedule::parse("Mon-Fri 09:00-18:00").unwrap();
        assert!(s.contains(1, 9 * 60));
        assert!(!s.contains(1, 18 * 60));
        assert!(!s.contains(0, 10 * 60));
        let night = Schedule::parse("22:00-06:00").unwrap();
        assert!(night.contains(3, 23 * 60) && night.contains(4, 60) && !night.contains(4, 12 * 60));
        let weekend_nights = Schedule::parse("Sat,Sun 22:00-06:00").unwrap();
        // Sunday 01:00 belongs to Saturday night; Monday 01:00 to Sunday night.
        assert!(weekend_nights.contains(0, 60) && weekend_nights.contains(1, 60));
        assert!(!weekend_nights.contains(2, 60));
        let wrap = Schedule::parse("Fri-Mon").unwrap();
        assert!(wrap.contains(5, 0) && wrap.contains(0, 0) && wrap.contains(1, 0));
        assert!(!wrap.contains(3, 0));
    }

    #[test]
    #[cfg(unix)]
    fn network_conditions_see_the_loopback_only_while_it_is_up() {
        // Loopback is always up here; a range nobody has is not.
        assert!(Condition::parse("network=127.0.0.0/8").unwrap().holds());
        assert!(Condition::parse("network=203.0.113.0/24|127.0.0.0/8")
            .unwrap()
            .holds());
        let far = Condition::parse("network=203.0.113.0/24").unwrap();
        assert!(!far.holds());
        assert_eq!(far.describe(), "network 203.0.113.0/24");
    }

    #[test]
    fn the_gateway_comes_from_the_route_and_neighbour_tables() {
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                      eth0\t00000000\t0100140A\t0003\t0\t0\t100\t00000000\n\
                      eth0\t0000140A\t00000000\t0001\t0\t0\t100\t0000FFFF\n";
        let arp =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
                   10.20.0.1        0x1         0x2         52:54:00:ab:cd:01     *        eth0\n\
                   10.20.0.7        0x1         0x2         52:54:00:ab:cd:07     *        eth0\n";
        if cfg!(target_endian = "little") {
            assert_eq!(
                gateway_macs_from(routes, arp),
                vec![[0x52, 0x54, 0, 0xab, 0xcd, 1]]
            );
        }
        // An incomplete neighbour entry is no gateway yet.
        let incomplete = arp.replace(
            "0x2         52:54:00:ab:cd:01",
            "0x0         52:54:00:ab:cd:01",
        );
        assert!(gateway_macs_from(routes, &incomplete).is_empty());
    }

    #[test]
    fn host_condition_connects() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(host_answers("127.0.0.1", port, Duration::from_secs(1)));
        drop(l);
        assert!(!host_answers("127.0.0.1", port, Duration::from_secs(1)));
    }
}

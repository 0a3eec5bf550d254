//! Push: the devices of a shared vault hear of each other at once through an XMPP server the
//! user hosts, as the XMPP-based file sync systems did. Presence says who is online; the
//! vault's publish-subscribe node says who wrote what. Only hints travel there: a device told
//! "the laptop wrote its log object 42" pulls from the vault, which is the truth and checks
//! everything it gives. A lost, late or forged notice costs a poll, never data, and the
//! server learns device ids and log numbers, not names or contents.
//!
//! All devices log in as one account (the pocket config, and so the account, travels with
//! `init --join`), each as its own resource, its device id: the server then broadcasts each
//! resource's presence to the others (RFC 6121 §4.2.2). The node is the account's own (PEP,
//! XEP-0163, which any account may publish to; or a service given with `--pubsub` where the
//! account may make nodes); the account subscribes to it, so the notices come as headlines to
//! the account, which the server gives every resource online.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use tokio_xmpp::connect::{DnsConfig, ServerConnector, StartTlsServerConnector};
use tokio_xmpp::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::pubsub::{self, pubsub as ps, NodeName, PubSub};
use tokio_xmpp::parsers::{message::MessageType, ns};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, IqRequest, IqResponse, Stanza};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::pocket::PushConfig;

/// The payload's namespace: `<head xmlns=NS>GEN</head>`, published under the device's id.
const NS: &str = "urn:backpocket:push:0";

/// The name its credentials are sealed under in the pocket config.
pub const SEALED_AS: &str = "push";

/// What the push connection heard, for the pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Logged in (again): what was missed meanwhile is worth a look.
    Connected,
    /// Another device wrote its log object `gen` to the vault.
    Wrote { device: String, gen: u64 },
    /// Another device came online or went offline.
    Presence { device: String, online: bool },
}

/// Where and as whom to connect, the password opened.
#[derive(Clone)]
pub struct Account {
    jid: BareJid,
    password: Zeroizing<String>,
    dns: DnsConfig,
    pubsub: Jid,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("jid", &self.jid)
            .field("server", &self.dns.to_string())
            .field("pubsub", &self.pubsub)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// From the pocket config, the password unsealed with the pocket key.
    pub fn open(cfg: &PushConfig, key: &replicator::Key) -> Result<Account> {
        let secrets = replicator::open_secrets(key, SEALED_AS, &cfg.password)
            .map_err(|e| anyhow!("{e}").context("cannot open the push account's password; set it again with `backpocket devices push ACCOUNT`"))?;
        let password = secrets
            .password
            .clone()
            .ok_or_else(|| anyhow!("the push account has no password in the config; set it again with `backpocket devices push ACCOUNT`"))?;
        Account::new(
            &cfg.xmpp,
            cfg.server.as_deref(),
            cfg.pubsub.as_deref(),
            Zeroizing::new(password),
        )
    }

    /// Checks the account's address, the server and the service as given.
    pub fn new(
        account: &str,
        server: Option<&str>,
        pubsub: Option<&str>,
        password: Zeroizing<String>,
    ) -> Result<Account> {
        let jid: BareJid = account.parse().map_err(|e| {
            anyhow!("{account} is not an XMPP account ({e}); give it as name@domain")
        })?;
        if jid.node().is_none() {
            bail!("{account} names a server, not an account; give it as name@{account}");
        }
        let dns = match server {
            None => DnsConfig::srv_default_client(jid.domain().as_str()),
            Some(s) => {
                let (host, port) = match s.rsplit_once(':') {
                    Some((h, p)) if !h.ends_with(':') => (
                        h.trim_matches(|c| c == '[' || c == ']'),
                        p.parse::<u16>()
                            .map_err(|_| anyhow!("{s}: the port is not a number"))?,
                    ),
                    _ => (s, 5222),
                };
                if host.parse::<std::net::IpAddr>().is_ok() {
                    let ip: std::net::IpAddr = host.parse().expect("checked");
                    DnsConfig::addr(&std::net::SocketAddr::new(ip, port).to_string())
                } else {
                    DnsConfig::no_srv(host, port)
                }
            }
        };
        let pubsub = match pubsub {
            Some(p) => p
                .parse::<Jid>()
                .map_err(|e| anyhow!("{p} is not a publish-subscribe service's address ({e})"))?,
            // The account's own service (PEP, XEP-0163), which every account may publish to.
            None => jid.clone().into(),
        };
        Ok(Account {
            jid,
            password,
            dns,
            pubsub,
        })
    }

    pub fn jid(&self) -> &BareJid {
        &self.jid
    }

    /// Logs in once, and says plainly why not: for `devices push`, before the config takes
    /// an account that cannot work.
    pub async fn check(&self) -> Result<()> {
        let jid: Jid = self.jid.clone().into();
        let connector = StartTlsServerConnector::from(self.dns.clone());
        let login = async {
            let (pending, binding) = connector
                .connect(&jid, ns::JABBER_CLIENT, Timeouts::default())
                .await?;
            let (features, stream) = pending.recv_features().await?;
            let creds = sasl::common::Credentials::default()
                .with_username(self.jid.node().map(|n| n.as_str()).unwrap_or_default())
                .with_password(self.password.as_str())
                .with_channel_binding(binding);
            tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds).await?;
            Ok::<(), tokio_xmpp::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(20), login).await {
            Err(_) => bail!(
                "no answer from the XMPP server at {} within 20 s: check the address (--server HOST:PORT) and that the server runs",
                self.dns
            ),
            Ok(Err(tokio_xmpp::Error::Auth(e))) => bail!(
                "the XMPP server at {} refused {} ({e}): check the account and its password",
                self.dns,
                self.jid
            ),
            Ok(Err(e)) => Err(anyhow!("{e}")).with_context(|| {
                format!(
                    "cannot log in to the XMPP server at {} as {} (is it reachable, and does its certificate name {}?)",
                    self.dns,
                    self.jid,
                    self.jid.domain()
                )
            }),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// `devices push ACCOUNT`: the devices of this pocket's vault hear of each other through the
/// XMPP account (checked by logging in once); `--off` goes back to polling alone. The
/// password comes from `BACKPOCKET_XMPP_PASSWORD` or a prompt, and is kept sealed with the
/// pocket key. Devices that join afterwards get the account with the config; one that joined
/// before is told with the same command there.
pub fn set(
    p: &crate::pocket::Pocket,
    account: Option<&str>,
    server: Option<&str>,
    pubsub: Option<&str>,
    args: &crate::keys::KeyArgs,
) -> Result<()> {
    let mut config = p.config()?;
    let Some(account) = account else {
        if config.push.take().is_none() {
            println!("push was off already: the devices poll the vault");
            return Ok(());
        }
        p.save_config(&config)?;
        println!("push is off: the devices poll the vault (from the next mount)");
        return Ok(());
    };
    let key = crate::keys::pocket_key(&config, args, true)?.ok_or_else(|| {
        anyhow!("this pocket has no vault destination yet; push tells the devices of a shared vault of each other")
    })?;
    let password = match std::env::var("BACKPOCKET_XMPP_PASSWORD") {
        Ok(p) if !p.is_empty() => Zeroizing::new(p),
        _ if std::io::IsTerminal::is_terminal(&std::io::stdin()) => Zeroizing::new(
            rpassword::prompt_password(format!("password of {account}: "))
                .context("cannot read the password")?,
        ),
        _ => bail!(
            "no password for {account}: set BACKPOCKET_XMPP_PASSWORD, or run this at a terminal"
        ),
    };
    let a = Account::new(account, server, pubsub, password.clone())?;
    let rt = replicator::runtime()?;
    rt.block_on(a.check())?;
    let mut secrets = replicator::Secrets::default();
    secrets.password = Some(password.to_string());
    config.push = Some(PushConfig {
        xmpp: a.jid().to_string(),
        server: server.map(str::to_owned),
        pubsub: pubsub.map(str::to_owned),
        password: replicator::seal_secrets(&key, SEALED_AS, &secrets)
            .map_err(|e| anyhow!("cannot seal the password: {e}"))?,
    });
    p.save_config(&config)?;
    println!(
        "logged in as {}: this device tells the others of its changes through it, and hears of theirs, from the next mount (devices that join from now on get it with the config; one that joined before: run this there too)",
        a.jid()
    );
    Ok(())
}

/// The running connection: told what this device wrote, it tells the others; what it hears
/// comes out of [`Push::heard`].
#[derive(Debug)]
pub struct Push {
    wrote: tokio::sync::mpsc::UnboundedSender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    heard: crossbeam_channel::Receiver<Heard>,
}

impl Push {
    /// Connects in the background (and again after every cut, backing off); `node` names the
    /// vault, so that vaults sharing an account do not hear each other.
    pub fn start(rt: &tokio::runtime::Handle, account: Account, me: &str, node: String) -> Push {
        let (wrote, wrote_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (heard_tx, heard) = crossbeam_channel::unbounded();
        let me = me.to_owned();
        let task = rt.spawn(async move {
            run(account, me, node, wrote_rx, stop_rx, heard_tx).await;
        });
        Push {
            wrote,
            stop: Some(stop),
            task,
            heard,
        }
    }

    /// This device wrote its log object `gen` to the vault.
    pub fn wrote(&self, gen: u64) {
        let _ = self.wrote.send(gen);
    }

    pub fn heard(&self) -> &crossbeam_channel::Receiver<Heard> {
        &self.heard
    }

    /// Says goodbye (the others see this device go offline at once) and waits for it, a few
    /// seconds at most.
    pub fn stop(mut self, rt: &tokio::runtime::Handle) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let task = self.task;
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
    }
}

async fn run(
    account: Account,
    me: String,
    node: String,
    mut wrote: tokio::sync::mpsc::UnboundedReceiver<u64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    heard: crossbeam_channel::Sender<Heard>,
) {
    let full = match FullJid::new(&format!("{}/{me}", account.jid)) {
        Ok(j) => j,
        Err(e) => {
            warn!("push: {}/{me} is not an XMPP address: {e}", account.jid);
            return;
        }
    };
    let mut client = Client::new_with_connector(
        full,
        account.password.as_str(),
        StartTlsServerConnector::from(account.dns.clone()),
        Timeouts::default(),
    );
    let node = NodeName(node);
    // The newest of this device's log objects, published again after every reconnect (a
    // notice sent while cut off is lost).
    let mut newest: Option<u64> = None;
    let mut online = false;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            g = wrote.recv() => {
                let Some(mut g) = g else { break };
                // Only the newest matters.
                while let Ok(more) = wrote.try_recv() {
                    g = g.max(more);
                }
                newest = Some(newest.map_or(g, |n| n.max(g)));
                if online {
                    publish(&mut client, &account, &node, &me, g).await;
                }
            }
            ev = client.next() => match ev {
                None => break,
                Some(Event::Online { bound_jid, .. }) => {
                    online = true;
                    info!(jid = %bound_jid, "push: connected to the XMPP server");
                    // Priority 0: headlines to the account reach resources with presence
                    // and a priority of at least 0.
                    let p = Presence::available().with_priority(0);
                    if let Err(e) = client.send_stanza(Stanza::Presence(p)).await {
                        debug!("push: presence: {e}");
                    }
                    prepare(&mut client, &account, &node).await;
                    if let Some(g) = newest {
                        publish(&mut client, &account, &node, &me, g).await;
                    }
                    // The others' newest, as the node keeps them: what was published while
                    // this device was away.
                    ask_items(&mut client, &account, &node, &me, &heard).await;
                    let _ = heard.send(Heard::Connected);
                }
                Some(Event::Disconnected(e)) => {
                    online = false;
                    warn!("push: the XMPP connection ended ({e}); connecting again");
                }
                Some(Event::Stanza(s)) => take(s, &account, &node, &me, &heard),
            }
        }
    }
    if online {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            client.send_stanza(Stanza::Presence(Presence::unavailable())),
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), client.send_end()).await;
}

/// Makes the vault's node (a second device finds it made) and subscribes the account to it.
async fn prepare(client: &mut Client, account: &Account, node: &NodeName) {
    let create = PubSub::Create {
        create: ps::Create {
            node: Some(node.clone()),
        },
        configure: None,
    };
    // Made already (conflict) is what every device after the first hears.
    let _ = iq(client, account, IqRequest::Set(create.into())).await;
    let sub = PubSub::Subscribe {
        subscribe: Some(ps::Subscribe {
            jid: account.jid.clone().into(),
            node: Some(node.clone()),
        }),
        options: None,
    };
    if let Err(e) = iq(client, account, IqRequest::Set(sub.into())).await {
        warn!(
            "push: cannot subscribe to {} on {}: {e}; the other devices' changes come by polling",
            node.0, account.pubsub
        );
    }
}

async fn publish(client: &mut Client, account: &Account, node: &NodeName, me: &str, gen: u64) {
    let payload = Element::builder("head", NS).append(gen.to_string()).build();
    let publish = PubSub::Publish {
        publish: ps::Publish {
            node: node.clone(),
            items: vec![ps::Item {
                id: Some(pubsub::ItemId(me.to_owned())),
                publisher: None,
                payload: Some(payload),
            }],
        },
        publish_options: None,
    };
    match iq(client, account, IqRequest::Set(publish.into())).await {
        Ok(_) => debug!(gen, "push: told the other devices"),
        Err(e) => warn!("push: cannot tell the other devices what this one wrote: {e}"),
    }
}

async fn ask_items(
    client: &mut Client,
    account: &Account,
    node: &NodeName,
    me: &str,
    heard: &crossbeam_channel::Sender<Heard>,
) {
    let get = PubSub::Items(ps::Items::new(&node.0));
    match iq(client, account, IqRequest::Get(get.into())).await {
        Ok(Some(el)) => {
            if let Ok(PubSub::Items(items)) = PubSub::try_from(el) {
                for it in items.items {
                    if let Some(h) = heard_of(it.id.map(|i| i.0), it.payload.as_ref(), me) {
                        let _ = heard.send(h);
                    }
                }
            }
        }
        Ok(None) => {}
        Err(e) => debug!("push: cannot read the node's items: {e}"),
    }
}

/// An IQ to the publish-subscribe service, its answer awaited at most 10 s.
async fn iq(
    client: &mut Client,
    account: &Account,
    req: IqRequest,
) -> std::result::Result<Option<Element>, String> {
    let token = client.send_iq(Some(account.pubsub.clone()), req).await;
    match tokio::time::timeout(Duration::from_secs(10), token).await {
        Err(_) => Err("no answer within 10 s".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(IqResponse::Result(el))) => Ok(el),
        Ok(Ok(IqResponse::Error(e))) => Err(format!("{:?}: {:?}", e.type_, e.defined_condition)),
    }
}

/// A stanza the server passed on: another resource's presence, or the node's notice.
fn take(
    s: Stanza,
    account: &Account,
    node: &NodeName,
    me: &str,
    heard: &crossbeam_channel::Sender<Heard>,
) {
    match s {
        Stanza::Presence(p) => {
            let Some(from) = p.from.as_ref().and_then(|f| f.try_as_full().ok()) else {
                return;
            };
            if from.to_bare() != account.jid || from.resource().as_str() == me {
                return;
            }
            let online = match p.type_ {
                PresenceType::None => true,
                PresenceType::Unavailable => false,
                _ => return,
            };
            let _ = heard.send(Heard::Presence {
                device: from.resource().as_str().to_owned(),
                online,
            });
        }
        Stanza::Message(m) => {
            // Notices come from the service only; anything else addressed to the account is
            // not ours to read.
            if m.from.as_ref() != Some(&account.pubsub) || m.type_ == MessageType::Error {
                return;
            }
            for el in m.payloads {
                let Ok(ev) = pubsub::event::Event::try_from(el) else {
                    continue;
                };
                if let pubsub::event::Payload::Items {
                    node: n, published, ..
                } = ev.payload
                {
                    if &n != node {
                        continue;
                    }
                    for it in published {
                        if let Some(h) = heard_of(it.id.map(|i| i.0), it.payload.as_ref(), me) {
                            let _ = heard.send(h);
                        }
                    }
                }
            }
        }
        Stanza::Iq(_) => {}
    }
}

/// An item as a notice: published under another device's id, its payload a log number.
fn heard_of(id: Option<String>, payload: Option<&Element>, me: &str) -> Option<Heard> {
    let device = id?;
    if device == me || !replicator::devices::is_device_id(&device) {
        return None;
    }
    let p = payload?;
    if !p.is("head", NS) {
        return None;
    }
    let gen = p.text().trim().parse().ok()?;
    Some(Heard::Wrote { device, gen })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_devices_well_formed_notice_is_heard() {
        let me = "0123456789abcdef0123456789abcdef";
        let other = "fedcba9876543210fedcba9876543210";
        let head = |t: &str| Element::builder("head", NS).append(t.to_owned()).build();
        assert_eq!(
            heard_of(Some(other.into()), Some(&head("42")), me),
            Some(Heard::Wrote {
                device: other.into(),
                gen: 42
            })
        );
        assert_eq!(heard_of(Some(me.into()), Some(&head("42")), me), None);
        assert_eq!(heard_of(Some(other.into()), Some(&head("x")), me), None);
        assert_eq!(heard_of(Some("../etc".into()), Some(&head("1")), me), None);
        let foreign = Element::builder("head", "urn:other").append("1").build();
        assert_eq!(heard_of(Some(other.into()), Some(&foreign), me), None);
        assert_eq!(heard_of(None, Some(&head("1")), me), None);
    }

    #[test]
    fn accounts_and_servers_are_read_or_refused_with_the_reason() {
        let pw = || Zeroizing::new("hunter2".to_owned());
        let a = Account::new("dev@home.example", Some("127.0.0.1:15222"), None, pw()).unwrap();
        assert_eq!(a.dns.to_string(), "127.0.0.1:15222");
        assert_eq!(a.pubsub.to_string(), "dev@home.example");
        let a = Account::new("dev@home.example", Some("xmpp.home.example"), None, pw()).unwrap();
        assert_eq!(a.dns.to_string(), "xmpp.home.example:5222");
        let a = Account::new(
            "dev@home.example",
            Some("[::1]:5222"),
            Some("ps.example"),
            pw(),
        )
        .unwrap();
        assert_eq!(a.dns.to_string(), "[::1]:5222");
        assert_eq!(a.pubsub.to_string(), "ps.example");
        let e = Account::new("home.example", None, None, pw()).unwrap_err();
        assert!(e.to_string().contains("names a server"), "{e}");
        let e = Account::new("dev@home.example", Some("h:port"), None, pw()).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}

//! How to reach Redis: one server, a Redis Cluster, or a master found
//! through Sentinel, each named by one URL.
//!
//! redis-rs parses the single-server URL itself; the cluster and sentinel
//! forms are ours (redis-rs has none). They are split here into one
//! single-server URL per node, which redis-rs then parses, so every node
//! gets exactly the TLS, credential and protocol handling a single server
//! would. Nothing here ever repeats a URL in an error or in `Debug`: it may
//! hold a password.

use std::fmt;
use std::time::Duration;

use redis::io::tcp::TcpSettings;
use redis::{
    Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    RedisConnectionInfo, TlsCertificates,
};

use crate::BuildError;
use crate::store::BreakerConfig;

/// The port of a cluster node or a master when the URL names none.
const REDIS_PORT: u16 = 6379;
/// The port of a sentinel when the URL names none.
const SENTINEL_PORT: u16 = 26379;

const STANDALONE_FORM: &str = "redis[s]://[[user]:password@]host[:port][/db]";
const CLUSTER_FORM: &str = "redis[s]+cluster://[[user]:password@]host1[:port1],host2[:port2],...";
const SENTINEL_FORM: &str =
    "redis[s]+sentinel://[[user]:password@]host1[:port1],host2[:port2],.../master-name[/db]";

/// How to reach Redis. Built from a URL or from the environment.
///
/// # URL forms
///
/// * One server: `redis://[[user]:password@]host[:port][/db]`, or
///   `rediss://…` for TLS (any URL redis-rs accepts, Unix sockets
///   included).
/// * Redis Cluster:
///   `redis+cluster://[[user]:password@]host1[:port1],host2[:port2],...`
///   (`rediss+cluster://` for TLS). The hosts are seeds: any reachable one
///   is enough to discover the others. Ports default to 6379. There is no
///   database number (a cluster has only database 0).
/// * Sentinel:
///   `redis+sentinel://[[user]:password@]host1[:port1],host2[:port2],.../master-name[/db]`
///   (`rediss+sentinel://` for TLS to the sentinels and the master). The
///   hosts are sentinels (ports default to 26379); the credentials and the
///   database are the master's. Sentinels that require a password take it
///   as query options: `?sentinel_password=…` and optionally
///   `&sentinel_username=…` (percent-encoded).
///
/// On every form, a password with reserved characters (`@ : / ? # % ,`)
/// must be percent-encoded, as in any URL; `?protocol=resp3` and, for TLS,
/// `#insecure` work as they do for redis-rs.
///
/// ```
/// use std::time::Duration;
/// use cachette::store::RedisConfig;
///
/// let config = RedisConfig::from_url("redis://:s3cret@127.0.0.1:6379/2")
///     .unwrap()
///     .command_timeout(Duration::from_millis(250));
/// // The password never shows.
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let cluster = RedisConfig::from_url(
///     "redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7000,10.0.0.3",
/// )
/// .unwrap();
/// let shown = format!("{cluster:?}");
/// assert!(shown.contains("10.0.0.3:6379") && !shown.contains("s3cret"));
///
/// let sentinel = RedisConfig::from_url(
///     "rediss+sentinel://:s3cret@10.0.0.1,10.0.0.2:26380/cache/1?sentinel_password=t0ps3cret",
/// )
/// .unwrap();
/// let shown = format!("{sentinel:?}");
/// assert!(shown.contains("cache") && shown.contains("10.0.0.1:26379"));
/// assert!(!shown.contains("s3cret") && !shown.contains("t0ps3cret"));
///
/// // A URL that does not parse is not repeated in the error either.
/// let err = RedisConfig::from_url("redis+cluster://:s3cret@").unwrap_err();
/// assert!(!err.to_string().contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    pub(super) topology: Topology,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    pub(super) retries: u32,
    pub(super) breaker: BreakerConfig,
    /// Certificates beyond the URL: a private CA, a client identity.
    pub(super) tls: Option<TlsCertificates>,
}

/// What the URL named.
#[derive(Clone)]
pub(crate) enum Topology {
    /// One server.
    Standalone(ConnectionInfo),
    /// Redis Cluster: the seed nodes (at least one).
    Cluster(Vec<ConnectionInfo>),
    /// A master found through Sentinel.
    Sentinel(SentinelSpec),
}

/// A master found through Sentinel.
#[derive(Clone)]
pub(crate) struct SentinelSpec {
    /// The sentinels (at least one), with the sentinels' credentials.
    pub(crate) sentinels: Vec<ConnectionInfo>,
    pub(crate) master_name: String,
    /// The master's settings (credentials, database, TLS); its address is a
    /// placeholder, replaced by the one the sentinels name.
    pub(crate) master: ConnectionInfo,
}

impl SentinelSpec {
    /// The master's connection settings at `host:port`.
    pub(crate) fn master_at(&self, host: String, port: u16) -> ConnectionInfo {
        let addr = match self.master.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        self.master.clone().set_addr(addr)
    }
}

fn bad(reason: String) -> BuildError {
    BuildError::Redis { reason }
}

impl RedisConfig {
    /// Parses a URL in one of the [forms above](RedisConfig#url-forms).
    ///
    /// # Errors
    /// [`BuildError::Redis`] when the URL does not parse. The message never
    /// repeats the URL, which may hold a password.
    pub fn from_url(url: &str) -> Result<RedisConfig, BuildError> {
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        let topology = match scheme.as_deref() {
            Some("redis+cluster") => parse_cluster("redis", url)?,
            Some("rediss+cluster") => parse_cluster("rediss", url)?,
            Some("redis+sentinel") => parse_sentinel("redis", url)?,
            Some("rediss+sentinel") => parse_sentinel("rediss", url)?,
            _ => Topology::Standalone(url.into_connection_info().map_err(|_| {
                bad(format!(
                    "the Redis URL does not parse (expected {STANDALONE_FORM}, {CLUSTER_FORM} or {SENTINEL_FORM})"
                ))
            })?),
        };
        Ok(RedisConfig::from_topology(topology))
    }

    /// Reads `REDIS_URL` when set (any [URL form](RedisConfig#url-forms));
    /// otherwise `REDIS_HOST` (default `127.0.0.1`), `REDIS_PORT` (default
    /// `6379`), `REDIS_USERNAME`, `REDIS_PASSWORD` and `REDIS_DB` (default
    /// `0`), for one server.
    ///
    /// # Errors
    /// [`BuildError::Redis`] when a variable does not parse.
    pub fn from_env() -> Result<RedisConfig, BuildError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(url) = var("REDIS_URL") {
            return RedisConfig::from_url(&url);
        }
        let host = var("REDIS_HOST").unwrap_or_else(|| "127.0.0.1".into());
        let port = match var("REDIS_PORT") {
            None => REDIS_PORT,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad(format!("REDIS_PORT `{p}` is not a port number")))?,
        };
        let db = match var("REDIS_DB") {
            None => 0,
            Some(d) => d
                .parse::<i64>()
                .map_err(|_| bad(format!("REDIS_DB `{d}` is not a database number")))?,
        };
        let mut redis = RedisConnectionInfo::default().set_db(db);
        if let Some(user) = var("REDIS_USERNAME") {
            redis = redis.set_username(user);
        }
        if let Some(password) = var("REDIS_PASSWORD") {
            redis = redis.set_password(password);
        }
        let info = ConnectionAddr::Tcp(host, port)
            .into_connection_info()
            .map_err(|_| bad("REDIS_HOST/REDIS_PORT do not form an address".into()))?
            .set_redis_settings(redis);
        Ok(RedisConfig::from_topology(Topology::Standalone(info)))
    }

    fn from_topology(topology: Topology) -> RedisConfig {
        let nodelay =
            |info: ConnectionInfo| info.set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let topology = match topology {
            Topology::Standalone(info) => Topology::Standalone(nodelay(info)),
            Topology::Cluster(nodes) => Topology::Cluster(nodes.into_iter().map(nodelay).collect()),
            Topology::Sentinel(spec) => Topology::Sentinel(SentinelSpec {
                sentinels: spec.sentinels.into_iter().map(nodelay).collect(),
                master: nodelay(spec.master),
                master_name: spec.master_name,
            }),
        };
        RedisConfig {
            topology,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(500),
            retries: 2,
            breaker: BreakerConfig::default(),
            tls: None,
        }
    }

    /// Trusts the CA certificate `ca_pem` (PEM) for a `rediss` URL, instead
    /// of the public web roots: a private CA, as managed Redis services and
    /// self-run TLS deployments use.
    ///
    /// # Errors
    /// [`BuildError::Redis`] when the URL is not a TLS one or the
    /// certificate does not parse.
    pub fn tls_ca_pem(mut self, ca_pem: impl Into<Vec<u8>>) -> Result<RedisConfig, BuildError> {
        let mut tls = self.tls.take().unwrap_or(TlsCertificates {
            client_tls: None,
            root_cert: None,
        });
        tls.root_cert = Some(ca_pem.into());
        self.with_tls(tls)
    }

    /// Presents a client certificate (mutual TLS): `cert_pem` and its
    /// private key `key_pem`, both PEM. The key never appears in `Debug`
    /// output or errors.
    ///
    /// # Errors
    /// As [`RedisConfig::tls_ca_pem`].
    pub fn tls_client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Result<RedisConfig, BuildError> {
        let mut tls = self.tls.take().unwrap_or(TlsCertificates {
            client_tls: None,
            root_cert: None,
        });
        tls.client_tls = Some(ClientTlsConfig {
            client_cert: cert_pem.into(),
            client_key: key_pem.into(),
        });
        self.with_tls(tls)
    }

    /// Applies `tls` to every address of the topology (which must all be
    /// TLS ones); Cluster nodes found later get it from the cluster client.
    fn with_tls(mut self, tls: TlsCertificates) -> Result<RedisConfig, BuildError> {
        let apply = |info: ConnectionInfo| -> Result<ConnectionInfo, BuildError> {
            if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
                return Err(bad(
                    "TLS certificates need a TLS URL (rediss://, rediss+cluster:// or rediss+sentinel://)"
                        .into(),
                ));
            }
            Client::build_with_tls(info, tls.clone())
                .map(|client| client.get_connection_info().clone())
                .map_err(|_| bad("the TLS certificate or key does not parse (PEM expected)".into()))
        };
        self.topology = match self.topology {
            Topology::Standalone(info) => Topology::Standalone(apply(info)?),
            Topology::Cluster(nodes) => {
                Topology::Cluster(nodes.into_iter().map(apply).collect::<Result<_, _>>()?)
            }
            Topology::Sentinel(spec) => Topology::Sentinel(SentinelSpec {
                // Sentinels are reached as the URL says; the master is the
                // TLS endpoint.
                sentinels: spec
                    .sentinels
                    .into_iter()
                    .map(|s| {
                        if matches!(s.addr(), ConnectionAddr::TcpTls { .. }) {
                            apply(s)
                        } else {
                            Ok(s)
                        }
                    })
                    .collect::<Result<_, _>>()?,
                master: apply(spec.master)?,
                master_name: spec.master_name,
            }),
        };
        self.tls = Some(tls);
        Ok(self)
    }

    /// The certificates given with [`RedisConfig::tls_ca_pem`] or
    /// [`RedisConfig::tls_client_identity`], for the cluster client.
    pub(crate) fn tls_certificates(&self) -> Option<&TlsCertificates> {
        self.tls.as_ref()
    }

    /// The circuit breaker around the store (see [`BreakerConfig`]): by
    /// default it opens after 5 consecutive failed or timed-out commands
    /// and probes every 250 ms.
    #[must_use]
    pub fn circuit_breaker(mut self, breaker: BreakerConfig) -> RedisConfig {
        self.breaker = breaker;
        self
    }

    /// The deadline of each connection attempt. By default, 1 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.connect_timeout = timeout;
        self
    }

    /// The deadline of each command attempt. By default, 500 ms.
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.command_timeout = timeout;
        self
    }

    /// How often a command that met a dropped connection (or, on Cluster, a
    /// slot on the move; on Sentinel, a demoted master) is retried: all
    /// commands this store sends are idempotent. By default, 2.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> RedisConfig {
        self.retries = retries;
        self
    }

    pub(crate) fn topology(&self) -> &Topology {
        &self.topology
    }

    pub(crate) fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn command_timeout_value(&self) -> Duration {
        self.command_timeout
    }
}

/// A cluster or sentinel URL cut into its parts; each part still
/// percent-encoded.
struct Parts<'a> {
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

fn split<'a>(url: &'a str, form: &str) -> Result<Parts<'a>, BuildError> {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let (rest, fragment) = match rest.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(bad(format!(
            "the Redis URL needs one or more comma-separated hosts, none empty (expected {form})"
        )));
    }
    Ok(Parts {
        userinfo,
        hosts,
        path,
        query,
        fragment,
    })
}

/// `host` with `default` as its port when it names none (`[v6]:port` too).
fn with_port(host: &str, default: u16) -> String {
    let has_port = match host.rfind(']') {
        Some(close) => host[close..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default}")
    }
}

/// One single-server URL for redis-rs to parse.
fn node_url(
    scheme: &str,
    userinfo: Option<&str>,
    host: &str,
    db: &str,
    query: Option<&str>,
    fragment: Option<&str>,
) -> String {
    let mut url = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        url.push_str(userinfo);
        url.push('@');
    }
    url.push_str(host);
    url.push('/');
    url.push_str(db);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(fragment);
    }
    url
}

fn parse_cluster(scheme: &str, url: &str) -> Result<Topology, BuildError> {
    let parts = split(url, CLUSTER_FORM)?;
    if !matches!(parts.path, "" | "/" | "/0") {
        return Err(bad(format!(
            "a Redis Cluster URL names no database: a cluster has only database 0 (expected {CLUSTER_FORM})"
        )));
    }
    let nodes = parts
        .hosts
        .iter()
        .map(|host| {
            node_url(
                scheme,
                parts.userinfo,
                &with_port(host, REDIS_PORT),
                "",
                parts.query,
                parts.fragment,
            )
            .into_connection_info()
            .map_err(|_| {
                bad(format!(
                    "a host, the credentials or an option of the Redis Cluster URL do not parse (expected {CLUSTER_FORM})"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Topology::Cluster(nodes))
}

fn parse_sentinel(scheme: &str, url: &str) -> Result<Topology, BuildError> {
    let parts = split(url, SENTINEL_FORM)?;
    let path = parts.path.strip_prefix('/').unwrap_or(parts.path);
    let (master_name, db) = match path.split_once('/') {
        Some((name, db)) => (name, db.trim_end_matches('/')),
        None => (path, ""),
    };
    if master_name.is_empty() || master_name.contains('%') {
        return Err(bad(format!(
            "a Sentinel URL names the master after the hosts (expected {SENTINEL_FORM})"
        )));
    }
    let mut sentinel_username = None;
    let mut sentinel_password = None;
    for (name, value) in url::form_urlencoded::parse(parts.query.unwrap_or("").as_bytes()) {
        match &*name {
            "sentinel_username" => sentinel_username = Some(value.into_owned()),
            "sentinel_password" => sentinel_password = Some(value.into_owned()),
            _ => {}
        }
    }
    let master = node_url(
        scheme,
        parts.userinfo,
        &format!("127.0.0.1:{REDIS_PORT}"),
        db,
        parts.query,
        parts.fragment,
    )
    .into_connection_info()
    .map_err(|_| {
        bad(format!(
            "the credentials, the database or an option of the Sentinel URL do not parse (expected {SENTINEL_FORM})"
        ))
    })?;
    let sentinels = parts
        .hosts
        .iter()
        .map(|host| {
            let info = node_url(
                scheme,
                None,
                &with_port(host, SENTINEL_PORT),
                "",
                parts.query,
                parts.fragment,
            )
            .into_connection_info()
            .map_err(|_| {
                bad(format!(
                    "a sentinel host of the Sentinel URL does not parse (expected {SENTINEL_FORM})"
                ))
            })?;
            let mut redis = info.redis_settings().clone();
            if let Some(user) = &sentinel_username {
                redis = redis.set_username(user);
            }
            if let Some(password) = &sentinel_password {
                redis = redis.set_password(password);
            }
            Ok(info.set_redis_settings(redis))
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    Ok(Topology::Sentinel(SentinelSpec {
        sentinels,
        master_name: master_name.to_owned(),
        master,
    }))
}

/// `host:port` of a node, for logs and `Debug`.
pub(crate) fn node_name(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
        _ => "<unix socket>".to_owned(),
    }
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |password: Option<&str>| password.map(|_| "<redacted>");
        let mut out = f.debug_struct("RedisConfig");
        let data = match &self.topology {
            Topology::Standalone(info) => {
                let (host, port) = match info.addr() {
                    ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                        (host.as_str(), *port)
                    }
                    _ => ("<unix socket>", 0),
                };
                out.field("host", &host).field("port", &port);
                info
            }
            Topology::Cluster(nodes) => {
                let names: Vec<String> = nodes.iter().map(node_name).collect();
                out.field("cluster", &names);
                // `from_url` makes at least one node; a cluster with none
                // shows no credentials rather than panicking.
                match nodes.first() {
                    Some(first) => first,
                    None => return out.finish_non_exhaustive(),
                }
            }
            Topology::Sentinel(spec) => {
                let names: Vec<String> = spec.sentinels.iter().map(node_name).collect();
                out.field("sentinels", &names)
                    .field("master_name", &spec.master_name);
                if let Some(first) = spec.sentinels.first() {
                    let redis = first.redis_settings();
                    out.field("sentinel_username", &redis.username())
                        .field("sentinel_password", &redacted(redis.password()));
                }
                &spec.master
            }
        };
        let redis = data.redis_settings();
        out.field("tls", &is_tls(data))
            .field("db", &redis.db())
            .field("username", &redis.username())
            .field("password", &redacted(redis.password()))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("retries", &self.retries)
            .field("breaker", &self.breaker)
            .field(
                "tls_ca",
                &self.tls.as_ref().is_some_and(|t| t.root_cert.is_some()),
            )
            .field(
                "tls_client_identity",
                &self
                    .tls
                    .as_ref()
                    .map(|t| t.client_tls.as_ref().map(|_| "<redacted>")),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Topology {
        RedisConfig::from_url(url)
            .unwrap_or_else(|e| panic!("{e}"))
            .topology
    }

    #[test]
    fn cluster_urls_name_every_seed_with_its_port() {
        let Topology::Cluster(nodes) = parse("redis+cluster://u:p%40ss@a:7000,b,[::1]:7002") else {
            panic!("not a cluster");
        };
        let names: Vec<String> = nodes.iter().map(node_name).collect();
        assert_eq!(names, ["a:7000", "b:6379", "[::1]:7002"]);
        for node in &nodes {
            assert_eq!(node.redis_settings().username(), Some("u"));
            assert_eq!(node.redis_settings().password(), Some("p@ss"));
            assert!(!is_tls(node));
        }
        let Topology::Cluster(nodes) = parse("rediss+cluster://h1:1,h2:2/#insecure") else {
            panic!("not a cluster");
        };
        assert!(nodes.iter().all(is_tls));
    }

    #[test]
    fn sentinel_urls_name_the_master_its_db_and_the_sentinels() {
        let Topology::Sentinel(spec) = parse(
            "redis+sentinel://:m%2Fpw@s1,s2:26380/cache/3?sentinel_password=s%26pw&protocol=resp3",
        ) else {
            panic!("not sentinel");
        };
        assert_eq!(spec.master_name, "cache");
        let names: Vec<String> = spec.sentinels.iter().map(node_name).collect();
        assert_eq!(names, ["s1:26379", "s2:26380"]);
        assert_eq!(spec.sentinels[0].redis_settings().password(), Some("s&pw"));
        assert_eq!(spec.sentinels[0].redis_settings().db(), 0);
        assert_eq!(spec.master.redis_settings().password(), Some("m/pw"));
        assert_eq!(spec.master.redis_settings().db(), 3);
        let at = spec.master_at("10.1.1.1".into(), 6390);
        assert_eq!(node_name(&at), "10.1.1.1:6390");
        assert_eq!(at.redis_settings().db(), 3);
        let Topology::Sentinel(spec) = parse("rediss+sentinel://s1/m") else {
            panic!("not sentinel");
        };
        assert!(is_tls(&spec.master_at("h".into(), 1)));
        assert!(spec.sentinels.iter().all(is_tls));
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for url in [
            "redis+cluster://:s3cret@",
            "redis+cluster://:s3cret@a:1,,b:2",
            "redis+cluster://:s3cret@a:1/2",
            "redis+cluster://:s3cret@a:notaport",
            "redis+sentinel://:s3cret@a:1",
            "redis+sentinel://:s3cret@a:1/m/notadb",
            "redis://:s3cret@a:1/notadb",
            "nonsense:s3cret",
        ] {
            let err = RedisConfig::from_url(url).err();
            let shown = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(!shown.is_empty(), "{url} parsed");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn debug_never_shows_a_password() {
        for url in [
            "redis://:s3cret@h/1",
            "redis+cluster://u:s3cret@h1,h2",
            "redis+sentinel://u:s3cret@h1/m?sentinel_password=s3cret",
        ] {
            let config = RedisConfig::from_url(url).unwrap_or_else(|e| panic!("{e}"));
            let shown = format!("{config:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }
}

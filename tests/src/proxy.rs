//! A TCP proxy the tests put between hosts and a backend (PostgreSQL, the
//! AWS emulator) to inject the faults a network makes: a cut link (open
//! connections reset, new ones refused), a stalled one (bytes held, nothing
//! answered), latency, and an answer lost after the server acted on a
//! request (a `COMMIT` whose reply never arrives).
//!
//! It runs on a runtime of its own, so a test blocked on a child process
//! does not stall the link; dropping it closes every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Forwards bytes, each read after `delay`.
    Up { delay: Duration },
    /// Resets open connections and every new one.
    Cut,
    /// Holds bytes: connections are accepted, nothing is forwarded.
    Stalled,
}

/// An armed "lose the answer" fault: on one connection, once the client
/// sent each needle in turn, the server's next answer is read and dropped
/// and the client's connection reset.
#[derive(Debug, Clone)]
struct LoseAnswer {
    needles: Vec<Vec<u8>>,
}

struct Control {
    link: watch::Sender<Link>,
    lose_answer: Mutex<Option<LoseAnswer>>,
    answers_lost: AtomicU64,
    connections: AtomicU64,
}

/// A proxy listening on `127.0.0.1:port`, forwarding to its target.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    control: Arc<Control>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// A proxy to `target` (`host:port`), forwarding at once.
    pub fn start(target: &str) -> Self {
        let target: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(target)
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("proxy target {target:?} is not host:port"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listens");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let control = Arc::new(Control {
            link: watch::channel(Link::Up {
                delay: Duration::ZERO,
            })
            .0,
            lose_answer: Mutex::new(None),
            answers_lost: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let accepting = control.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("proxy listener");
            accept(listener, target, accepting).await;
        });
        Self {
            port,
            control,
            runtime: Some(runtime),
        }
    }

    /// A proxy to the host and port `url` names (e.g. `postgres://u@h:5432/db`
    /// or `http://127.0.0.1:5000`), and `url` rewritten to go through it.
    pub fn for_url(url: &str) -> (Self, String) {
        let (scheme, rest) = url.split_once("://").expect("url has a scheme");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (user, address) = match authority.rsplit_once('@') {
            Some((user, address)) => (format!("{user}@"), address),
            None => (String::new(), authority),
        };
        let address = if address.contains(':') {
            address.to_string()
        } else {
            let default = if scheme.starts_with("postgres") {
                5432
            } else {
                80
            };
            format!("{address}:{default}")
        };
        let proxy = Self::start(&address);
        let url = format!("{scheme}://{user}127.0.0.1:{}{path}", proxy.port);
        (proxy, url)
    }

    /// Cuts the link: open connections are reset, new ones refused (reset
    /// as they are accepted), until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.control.link.send_replace(Link::Cut);
    }

    /// Stalls the link: bytes are held and nothing is answered, on open
    /// connections and new ones, until [`heal`](Self::heal) (which resets
    /// the stalled connections, as a peer that timed out would).
    pub fn stall(&self) {
        self.control.link.send_replace(Link::Stalled);
    }

    /// Forwards again, at once.
    pub fn heal(&self) {
        self.delay(Duration::ZERO);
    }

    /// Forwards every read after `delay`, both ways.
    pub fn delay(&self, delay: Duration) {
        self.control.link.send_replace(Link::Up { delay });
    }

    /// Arms a lost answer: on the next connection whose client sends each of
    /// `needles` in turn, the request holding the last one reaches the
    /// server, the server's answer is read and dropped, and the client's
    /// connection is reset. The server acted; the client cannot know.
    pub fn lose_answer_after(&self, needles: &[&[u8]]) {
        *self
            .control
            .lose_answer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(LoseAnswer {
            needles: needles.iter().map(|n| n.to_vec()).collect(),
        });
    }

    /// How many answers were lost so far.
    pub fn answers_lost(&self) -> u64 {
        self.control.answers_lost.load(Ordering::SeqCst)
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> u64 {
        self.control.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Callable from within a test's runtime; the sockets close as the
        // proxy's tasks are dropped.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, control: Arc<Control>) {
    while let Ok((client, _)) = listener.accept().await {
        control.connections.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        if *control.link.borrow() == Link::Cut {
            reset(client);
            continue;
        }
        tokio::spawn(relay(client, target, control.clone()));
    }
}

/// Closes `stream` with a reset instead of an orderly close.
fn reset(stream: TcpStream) {
    #[allow(deprecated)] // the replacement is not in every tokio 1.x
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Which way a read went.
enum Read {
    Client(usize),
    Server(usize),
}

async fn relay(mut client: TcpStream, target: SocketAddr, control: Arc<Control>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        reset(client);
        return;
    };
    let _ = server.set_nodelay(true);
    let mut link = control.link.subscribe();
    let (mut up, mut down) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    // How many needles of the armed fault this connection has sent.
    let mut matched = 0;
    loop {
        let state = *link.borrow_and_update();
        let delay = match state {
            Link::Cut => break,
            Link::Stalled => {
                if link.changed().await.is_err() {
                    break;
                }
                if *link.borrow() != Link::Cut {
                    // Healed after a stall: the peers have given up by now.
                    break;
                }
                continue;
            }
            Link::Up { delay } => delay,
        };
        let read = tokio::select! {
            read = client.read(&mut up) => read.map(Read::Client),
            read = server.read(&mut down) => read.map(Read::Server),
            _ = link.changed() => continue,
        };
        match read {
            Ok(Read::Client(0) | Read::Server(0)) | Err(_) => {
                // One side closed: close the other in order.
                let _ = client.shutdown().await;
                let _ = server.shutdown().await;
                return;
            }
            Ok(Read::Client(n)) => {
                tokio::time::sleep(delay).await;
                let lose = sent_last_needle(&control, &up[..n], &mut matched);
                if server.write_all(&up[..n]).await.is_err() {
                    break;
                }
                if lose {
                    // The server acts on the request and answers; the
                    // answer goes nowhere and the client sees a reset.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), server.read(&mut down)).await;
                    control.answers_lost.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
            Ok(Read::Server(n)) => {
                tokio::time::sleep(delay).await;
                if client.write_all(&down[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    reset(client);
    reset(server);
}

/// Whether `chunk` completes the armed fault's needles on this connection
/// (which then disarms it).
fn sent_last_needle(control: &Control, chunk: &[u8], matched: &mut usize) -> bool {
    let mut armed = control
        .lose_answer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(fault) = armed.as_ref() else {
        return false;
    };
    while let Some(needle) = fault.needles.get(*matched) {
        if !contains(chunk, needle) {
            break;
        }
        *matched += 1;
    }
    if *matched < fault.needles.len() {
        return false;
    }
    *armed = None;
    true
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

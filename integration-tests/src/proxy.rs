//! A TCP proxy that can cut the network between a client and a server, as a
//! partition would: while cut, bytes in flight in either direction are lost and
//! nothing is answered; when healed, every connection that lived through the cut is
//! closed (its stream lost bytes) and new connections pass again.
//!
//! Kafka clients learn broker addresses from metadata, so a proxied Kafka client
//! must bootstrap through a listener that advertises the proxy's address:
//! `scripts/services.sh` gives the single-node broker a `PROXIED` listener on
//! 127.0.0.1:9192 that advertises 127.0.0.1:9292 (see [`KAFKA_PROXIED`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The broker's proxied listener and the address it advertises:
/// `TRIBUTARY_KAFKA_PROXIED` = `LISTENER>ADVERTISED`, default
/// `127.0.0.1:9192>127.0.0.1:9292`.
pub const KAFKA_PROXIED: &str = "127.0.0.1:9192>127.0.0.1:9292";

/// A running proxy; stops when dropped.
pub struct Proxy {
    listen: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on `listen` (port 0: any free port) and forwards to `upstream`.
    pub async fn start(listen: &str, upstream: &str) -> Proxy {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("the proxy cannot listen on {listen}: {e}"));
        let listen = listener.local_addr().expect("local address");
        let upstream: SocketAddr = upstream.parse().expect("upstream address");
        let (cut, watch) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                tokio::spawn(serve(client, upstream, watch.clone()));
            }
        });
        Proxy { listen, cut, task }
    }

    /// A proxy in front of the broker's proxied listener (see [`KAFKA_PROXIED`]);
    /// returns it and the bootstrap address to give clients. Panics with
    /// instructions when the broker has no such listener.
    pub async fn kafka() -> (Proxy, String) {
        let setting =
            std::env::var("TRIBUTARY_KAFKA_PROXIED").unwrap_or_else(|_| KAFKA_PROXIED.to_owned());
        let (upstream, advertised) = setting
            .split_once('>')
            .expect("TRIBUTARY_KAFKA_PROXIED is LISTENER>ADVERTISED");
        if TcpStream::connect(upstream).await.is_err() {
            panic!(
                "no proxied Kafka listener answers at {upstream}: start the broker with \
                 `scripts/services.sh up` (its single node has one), or set \
                 TRIBUTARY_KAFKA_PROXIED=LISTENER>ADVERTISED for a broker whose listener \
                 LISTENER advertises ADVERTISED"
            );
        }
        let proxy = Proxy::start(advertised, upstream).await;
        (proxy, advertised.to_owned())
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Cuts the network: bytes in flight are lost, nothing is answered.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Heals the network: connections that lived through the cut are closed, new
    /// ones pass.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Cuts for `duration`, then heals.
    pub async fn cut_for(&self, duration: Duration) {
        self.cut();
        tokio::time::sleep(duration).await;
        self.heal();
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    // A connection opened during a cut gets no answer, and is closed at the heal.
    if *cut.borrow_and_update() {
        let _ = cut.wait_for(|cut| !*cut).await;
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (up, down) = (cut.clone(), cut.clone());
    let through_a_cut = async move {
        let _ = cut.wait_for(|cut| *cut).await;
        let _ = cut.wait_for(|cut| !*cut).await;
    };
    tokio::select! {
        () = pump(client_read, server_write, up) => {}
        () = pump(server_read, client_write, down) => {}
        () = through_a_cut => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *cut.borrow() {
            continue; // lost in the partition
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

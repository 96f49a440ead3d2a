//! The sample shop's process.
//!
//! ```text
//! example-shop                       all roles + HTTP API on SHOP_HTTP_ADDR (127.0.0.1:8080)
//! example-shop --role api,projections  only these roles (api, order-processor,
//!                                      inventory-processor, projections)
//! example-shop --demo [--orders N] [--clients N] [--skus N]
//!                                    all roles in this process, a seeded catalogue and a
//!                                    stream of orders, then a summary table; exits
//! example-shop admin <subcommand…>   the operations CLI with the shop's codecs and read
//!                                    models: events (decoded, --state), dead-letters
//!                                    replay, projections rebuild, and every `tributary`
//!                                    subcommand; `example-shop admin --help`
//! ```
//! Environment: `KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`, `SHOP_TOPIC_PREFIX`,
//! `SHOP_SCHEMA`, `SHOP_API_KEYS` (the API's bearer tokens, required by the api
//! role: see `example_shop::auth`; `--demo` makes its own), `RUST_LOG`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use example_shop::api::{ApiState, router};
use example_shop::app::{Role, ShopConfig, ShopError};
use example_shop::auth::ApiKeys;
use example_shop::load::{self, LoadPlan};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,example_shop=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("admin") {
        let exit = ShopConfig::from_env().run_admin(&args[1..]).await;
        std::process::exit(i32::from(exit.code()));
    }
    if let Err(err) = run(args).await {
        eprintln!("example-shop: {err}");
        std::process::exit(1);
    }
}

struct Args {
    demo: bool,
    roles: Vec<Role>,
    listen: String,
    orders: usize,
    clients: usize,
    skus: usize,
}

fn parse(args: Vec<String>) -> Result<Args, ShopError> {
    let mut parsed = Args {
        demo: false,
        roles: Role::ALL.to_vec(),
        listen: std::env::var("SHOP_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into()),
        orders: 300,
        clients: 20,
        skus: 10,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| ShopError::Usage(format!("{name} needs a value")))
        };
        let number = |name: &str, v: String| {
            v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ShopError::Usage(format!("{name} needs a positive number, not {v:?}"))
            })
        };
        match arg.as_str() {
            "--demo" => parsed.demo = true,
            "--role" | "--roles" => {
                parsed.roles = value("--role")?
                    .split(',')
                    .map(Role::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--listen" => parsed.listen = value("--listen")?,
            "--orders" => parsed.orders = number("--orders", value("--orders")?)?,
            "--clients" => parsed.clients = number("--clients", value("--clients")?)?,
            "--skus" => parsed.skus = number("--skus", value("--skus")?)?,
            "-h" | "--help" => {
                return Err(ShopError::Usage(
                    "usage: example-shop [--role api,order-processor,inventory-processor,projections] [--listen ADDR]\n       example-shop --demo [--orders N] [--clients N] [--skus N]\n       example-shop admin <subcommand…>   (example-shop admin --help)".into(),
                ));
            }
            other => {
                return Err(ShopError::Usage(format!(
                    "unknown argument {other:?}; try --help"
                )));
            }
        }
    }
    Ok(parsed)
}

async fn run(args: Vec<String>) -> Result<(), ShopError> {
    let args = parse(args)?;
    if args.demo {
        return demo(&args).await;
    }
    // The API without keys would refuse every request: refuse to start instead,
    // before anything else starts.
    let keys = if args.roles.contains(&Role::Api) {
        Some(ApiKeys::from_env().map_err(|e| ShopError::Usage(e.to_string()))?)
    } else {
        None
    };
    // Before anything starts: components take their metric handles at start.
    let metrics = example_shop::metrics::install()?;
    let config = ShopConfig::from_env();
    let store = config.store().await?;
    let running = config.start(&args.roles, &store).await?;
    println!(
        "example-shop: roles {:?}, topics {}.*, schema {}",
        args.roles, config.prefix, config.schema
    );
    if let Some(keys) = keys {
        // A component that dies is logged and makes /health answer 503 (naming
        // it) until the process is restarted: point the liveness probe there.
        config.migrate_read_models(&store).await?;
        let app = router(
            ApiState::new(config.gateway().await?, store.pool().clone())
                .with_roles(&running)
                .with_metrics(metrics)
                .with_keys(keys),
        );
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        println!(
            "example-shop: HTTP API on http://{}",
            listener.local_addr()?
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
    } else {
        // Without the API nothing would tell that a component died: exit instead,
        // so that the supervisor restarts the process.
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            (component, reason) = running.first_death() => {
                let _ = running.shutdown().await;
                return Err(ShopError::Died { component, reason });
            }
        }
    }
    println!("example-shop: shutting down");
    running.shutdown().await
}

async fn demo(args: &Args) -> Result<(), ShopError> {
    let run_id = format!("{:x}", uuid::Uuid::now_v7().as_u128() & 0xff_ffff);
    let mut config = ShopConfig::from_env();
    config.prefix = format!("shopdemo-{run_id}");
    config.schema = format!("shopdemo_{run_id}");
    let plan = LoadPlan::half_stocked(args.orders, args.clients, args.skus, &run_id);
    println!("Tributary sample shop: demo");
    println!(
        "  broker {}, topics {}.*, Postgres schema {}",
        config.kafka.bootstrap_servers(),
        config.prefix,
        config.schema
    );

    let started = Instant::now();
    let store = config.store().await?;
    let running = config.start(&Role::ALL, &store).await?;
    let api = router(
        ApiState::new(config.gateway().await?, store.pool().clone())
            .with_roles(&running)
            .with_keys(plan.tokens.api_keys()?),
    );
    println!(
        "  started 2 command processors, 3 projections and the fulfilment process manager in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    load::seed_catalogue(&api, store.pool(), &plan).await?;
    println!(
        "  catalogue: {} SKUs with {} units each",
        plan.skus, plan.stock_per_sku
    );

    let report = load::place_orders(&api, &plan, Arc::new(|_| {})).await?;
    let placed_at = Instant::now();
    println!(
        "  placed {} orders from {} clients in {:.2} s: {:.1} orders/s ({} refused, {} retries)",
        report.accepted,
        plan.clients,
        report.elapsed.as_secs_f64(),
        report.accepted as f64 / report.elapsed.as_secs_f64(),
        report.refused.len(),
        report.retries
    );
    let settled =
        load::wait_settled(store.pool(), report.accepted, Duration::from_secs(120)).await?;
    let settle_time = placed_at.elapsed();
    if settled.settled {
        println!(
            "  read models settled {:.2} s after the last order",
            settle_time.as_secs_f64()
        );
    } else {
        println!(
            "  read models did NOT settle within {:.0} s",
            settle_time.as_secs_f64()
        );
    }
    println!();
    println!(
        "  orders: {} confirmed, {} cancelled, {} still placed",
        settled.count("confirmed"),
        settled.count("cancelled"),
        settled.count("placed")
    );
    println!();
    println!("  SKU     initial  confirmed  available  reserved");
    for (sku, line) in &settled.skus {
        println!(
            "  {sku:<7} {:>7}  {:>9}  {:>9}  {:>8}",
            plan.stock_per_sku, line.confirmed_units, line.available, line.reserved
        );
    }
    let notifications: i64 = settled.notifications_per_order.values().sum();
    println!();
    println!(
        "  notifications: {notifications} for {} decided orders",
        settled.decided()
    );
    let token = plan.tokens.customer("customer-00");
    let path = "/customers/customer-00/notifications";
    let (_, sample) = load::call(&api, token, "GET", path, None).await?;
    if let Some(first) = sample.as_array().and_then(|a| a.first()) {
        println!("  e.g. GET /customers/customer-00/notifications → {first}");
    }

    running.shutdown().await?;
    sqlx::query(&format!("DROP SCHEMA {} CASCADE", config.schema))
        .execute(store.pool())
        .await?;
    if settled.settled {
        Ok(())
    } else {
        Err(ShopError::Usage(
            "the demo's read models did not settle".into(),
        ))
    }
}

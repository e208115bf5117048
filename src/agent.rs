//! Builds the parts, starts their threads, and takes them down in order on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{Config, SecretSource};
use crate::contain::Isolation;
use crate::discovery::{Discovery, NodeInfo};
use crate::http::server::HttpServer;
use crate::http::Ctx;
use crate::metrics::Metrics;
use crate::monitor::Monitor;
use crate::reaper::Reaper;
use crate::store::{DataDirLock, Store};
use crate::sync::Gauge;
use crate::tasks::registry::{Limits, Registry};
use crate::tasks::timer::Timer;
use crate::tasks::Stop;
use crate::worker::{Worker, Workers};
use crate::{events, ws};

/// Why the agent could not start: one line for the operator, and the exit code.
#[derive(Debug)]
pub enum StartError {
    /// The working directory (a task's default `cwd`) is gone or not UTF-8.
    WorkingDir { why: String },
    /// A part's thread (or its signal handling) could not be set up.
    Part { part: &'static str, source: std::io::Error },
    /// `DATA_DIR` is held by another agent, or its lock file cannot be opened.
    DataDir { why: String },
    /// The task journal cannot be opened.
    Journal { dir: std::path::PathBuf, source: std::io::Error },
    /// The HTTP port cannot be bound, or its workers started.
    Http { why: String },
    /// Tasks cannot be contained as the settings ask (`TASK_ISOLATION=cgroup` without a
    /// writable hierarchy, a default limit the mode cannot apply): a restart cannot help.
    Isolation { why: String },
}

impl StartError {
    /// 1 for a runtime failure; 2 when the settings ask for what this machine cannot give (an
    /// isolation it lacks), as for any other bad setting.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::WorkingDir { .. }
            | StartError::Part { .. }
            | StartError::DataDir { .. }
            | StartError::Journal { .. }
            | StartError::Http { .. } => 1,
            StartError::Isolation { .. } => 2,
        }
    }

    fn part(part: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
        move |source| StartError::Part { part, source }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::WorkingDir { why }
            | StartError::DataDir { why }
            | StartError::Http { why }
            | StartError::Isolation { why } => f.write_str(why),
            StartError::Part { part, source } => write!(f, "cannot start {part}: {source}"),
            StartError::Journal { dir, source } => {
                write!(f, "cannot open the task journal in {}: {source}", dir.display())
            }
        }
    }
}

/// Runs the agent until SIGTERM, SIGINT or SIGHUP; returns when every task has ended.
pub fn run(cfg: Config) -> Result<(), StartError> {
    let cfg = Arc::new(cfg);
    check_cwd()?;
    close_inherited_fds_on_exec();
    raise_fd_limit();
    crate::alloc::limit_arenas();
    // Signals first, so a SIGTERM during start-up is not lost, and is not fatal.
    let mut workers = Workers::default();
    let (sig_rx, signals) = spawn_signal_thread()?;
    workers.push(signals);
    detach_from_terminal();
    make_non_dumpable();

    let (monitor, monitor_worker) = Monitor::start().map_err(StartError::part("the monitor"))?;
    workers.push(monitor_worker);
    let (timer, timer_worker) = Timer::spawn(cfg.kill_grace).map_err(StartError::part("the timer"))?;
    workers.push(timer_worker);
    let (events_tx, events_rx, listeners) = events::channel();
    let metrics: Arc<Metrics> = Arc::default();
    // Before the history is read or anything runs; held until the agent exits.
    let (_data_dir_lock, reg) = open_registry(&cfg, Arc::clone(&monitor), timer, events_tx, Arc::clone(&metrics))?;
    if let Some(reaper) = Reaper::start_if_orphans_come(Arc::clone(&reg)).map_err(StartError::part("the reaper"))? {
        workers.push(reaper);
    }

    let (hub, hub_worker) = ws::hub::spawn(Arc::clone(&reg), Arc::clone(&metrics), events_rx, listeners)
        .map_err(StartError::part("the broadcaster"))?;
    workers.push(hub_worker);
    warn_about_open_access(&cfg);

    let ctx = Arc::new(Ctx {
        cfg: Arc::clone(&cfg),
        reg: Arc::clone(&reg),
        monitor,
        metrics,
        hub: hub.clone(),
        started: Instant::now(),
        long_requests: Gauge::default(),
    });
    let (port, http) = HttpServer::start(Arc::clone(&ctx)).map_err(|why| StartError::Http { why })?;
    workers.push(http);
    log_summary(&cfg, port, reg.next_id());
    // Kept apart: it is stopped first, when the drain begins (its stop sends cluster_leave).
    let discovery = start_discovery(&ctx, port)?;

    // The main thread waits for a signal, then drains.
    let first = sig_rx.recv().ok();
    log::info!(
        "received {}; draining: no new tasks, running ones get up to {} ms (a second signal stops them at once)",
        signal_text(first),
        cfg.shutdown_timeout.as_millis()
    );
    reg.stop_accepting();
    if let Some(d) = discovery {
        d.stop(); // sends cluster_leave
    }
    drain_tasks(&reg, &cfg, &sig_rx);
    reg.isolation().shutdown();
    // Follow streams end with their tasks; give them a moment to send their last chunk.
    if !ctx.long_requests.wait_zero(Instant::now() + Duration::from_secs(2)) {
        log::info!("{} long request(s) still being answered at exit", ctx.long_requests.get());
    }
    // HTTP, the broadcaster (which closes every WebSocket client), the reaper, the timer,
    // the monitor, the signal thread.
    workers.stop_all();
    // The clients' threads end once their close frame is out (a stalled one at its write
    // timeout); the process exit ends any left after a moment.
    if !hub.threads.wait_zero(Instant::now() + Duration::from_secs(2)) {
        log::info!("{} WebSocket thread(s) still closing at exit", hub.threads.get());
    }
    drop(ctx);
    drop(reg);
    log::info!("stopped");
    Ok(())
}

/// Locks `DATA_DIR`, opens the journal, sets up the isolation of tasks, and builds the
/// registry with the history (recovering what a crashed run left, then the control groups
/// it left).
fn open_registry(
    cfg: &Config,
    monitor: Arc<Monitor>,
    timer: Timer,
    events_tx: events::EventTx,
    metrics: Arc<Metrics>,
) -> Result<(DataDirLock, Arc<Registry>), StartError> {
    let lock = DataDirLock::acquire(&cfg.data_dir).map_err(|why| StartError::DataDir { why })?;
    let store =
        Store::open(&cfg.data_dir).map_err(|source| StartError::Journal { dir: cfg.data_dir.clone(), source })?;
    let isolation = start_isolation(cfg).map_err(|why| StartError::Isolation { why })?;
    let limits = Limits::from_config(cfg);
    let reg = Arc::new(Registry::new(limits, store.clone(), timer, events_tx, monitor, metrics, isolation));
    crate::tasks::recovery::recover(&reg, &store, &cfg.jobs_base_path);
    reg.isolation().sweep_leftovers();
    Ok((lock, reg))
}

/// Sets up how tasks are contained (README, "Containing tasks"), logs it, and refuses a
/// default limit the mode cannot apply.
fn start_isolation(cfg: &Config) -> Result<Isolation, String> {
    let iso = Isolation::setup(cfg.task_isolation, &cfg.data_dir)?;
    if let Err(name) = iso.check(&cfg.task_limits) {
        let var = match name {
            "memoryBytes" => "TASK_MEMORY_LIMIT",
            "cpus" => "TASK_CPU_LIMIT",
            _ => "TASK_PIDS_LIMIT",
        };
        return Err(format!(
            "{var} cannot be applied: tasks run with isolation {} here (see README, \"Containing tasks\")",
            iso.mode().as_str()
        ));
    }
    let limits = if iso.limits().is_empty() { "none".to_string() } else { iso.limits().join(", ") };
    log::info!(
        "isolation: {} (TASK_ISOLATION={}); limits a task may set: {limits}{}",
        iso.mode().as_str(),
        cfg.task_isolation.as_str(),
        if iso.resets_oom_score() { "; tasks reset their OOM score to 0" } else { "" }
    );
    for dir in iso.subtrees() {
        log::info!("isolation: task groups under {}", dir.display());
    }
    Ok(iso)
}

/// Tasks without a `cwd` run in the agent's: it must exist, and be text for the task object.
fn check_cwd() -> Result<(), StartError> {
    let cwd = std::env::current_dir().map_err(|e| StartError::WorkingDir {
        why: format!(
            "cannot read the working directory ({e}): was it deleted? Start the agent from an existing directory"
        ),
    })?;
    if cwd.to_str().is_none() {
        return Err(StartError::WorkingDir {
            why: format!(
                "the working directory {} is not valid UTF-8, so it cannot be a task's cwd; start the agent from another one",
                cwd.display()
            ),
        });
    }
    Ok(())
}

/// Not dumpable: a task running as the same (non-root) user cannot read this process's
/// memory or /proc/<pid>/environ, where CLUSTER_SECRET may be.
fn make_non_dumpable() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        log::warn!("cannot mark the agent non-dumpable: {e}");
    }
}

/// One warning at start for each setting that lets someone in without the secret.
fn warn_about_open_access(cfg: &Config) {
    if cfg.ws_allow_anonymous {
        log::warn!("WS_ALLOW_ANONYMOUS=true: any WebSocket client can read every task's output without the secret");
    }
    if !cfg.trusted_addresses.is_empty() {
        let ranges = cfg.trusted_addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        log::warn!("TRUSTED_ADDRESSES: requests from {ranges} need no cluster secret");
    }
    warn_readable_by_task_user(cfg);
}

/// The `discovery` thread, unless DISCOVERY_ENABLED=false.
fn start_discovery(ctx: &Arc<Ctx>, port: u16) -> Result<Option<Worker>, StartError> {
    if !ctx.cfg.discovery_enabled {
        log::info!("discovery: disabled (DISCOVERY_ENABLED=false)");
        return Ok(None);
    }
    let host = &ctx.monitor.host;
    let stats_ctx = Arc::clone(ctx);
    let node = NodeInfo {
        hostname: host.hostname.clone(),
        cpus: host.cpus,
        total_memory: host.total_memory,
        port,
        stats: Box::new(move || stats_ctx.stats()),
    };
    Discovery::start(&ctx.cfg, node, Arc::clone(&ctx.metrics)).map(Some).map_err(StartError::part("discovery"))
}

/// Marks every file descriptor the agent inherited (beyond stdin, stdout and stderr)
/// close-on-exec, so tasks do not inherit them: a daemon a task leaves behind must not hold
/// the pipe of whatever started the agent (a CI runner, a shell script waiting on it). The
/// agent's own descriptors are close-on-exec already (std opens them so).
fn close_inherited_fds_on_exec() {
    use rustix::io::{fcntl_getfd, fcntl_setfd, FdFlags};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|fd| *fd > 2).collect();
    let mut marked = 0;
    for fd in fds {
        // SAFETY: `fd` was listed as open a moment ago, and nothing in this process closes
        // descriptors yet (the only other thread, the log writer, just writes to stdout),
        // except the listing's own one, for which fcntl answers EBADF. It is borrowed only
        // for the two fcntl calls.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = fcntl_getfd(borrowed) {
            if !flags.contains(FdFlags::CLOEXEC) && fcntl_setfd(borrowed, flags | FdFlags::CLOEXEC).is_ok() {
                marked += 1;
            }
        }
    }
    if marked > 0 {
        log::info!("{marked} inherited file descriptor(s) marked close-on-exec: tasks do not get them");
    }
}

/// The open-file limit the agent raises its soft limit to (within the hard limit), as the
/// systemd unit's `LimitNOFILE` does: the 1024 a shell gives is about 340 WebSocket clients.
const WANTED_NOFILE: u64 = 65536;

/// Raises the soft open-file limit towards [`WANTED_NOFILE`], never past the hard limit.
/// Tasks inherit the raised limit.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let want = lim.maximum.map_or(WANTED_NOFILE, |hard| hard.min(WANTED_NOFILE));
    match lim.current {
        Some(soft) if soft < want => match setrlimit(Resource::Nofile, Rlimit { current: Some(want), ..lim }) {
            Ok(()) => log::info!("open-file limit raised from {soft} to {want}"),
            Err(e) => log::warn!("open-file limit is {soft}, and raising it to {want} failed: {e}"),
        },
        _ => {}
    }
}

/// Gives up the controlling terminal when the agent was started by hand in one: tasks then
/// have none either, so a task that opens `/dev/tty` (git or ssh asking for a password) fails
/// at once instead of writing to the operator's screen or stopping on SIGTTIN until its
/// timeout. (posix_spawn cannot start a task in a session of its own without giving up the
/// fast path.) Ctrl-C still reaches the agent: the terminal signals its process group.
fn detach_from_terminal() {
    // TIOCNOTTY is 0x5422 on these; other architectures keep the terminal.
    #[cfg(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64"
        )
    ))]
    {
        const TIOCNOTTY: rustix::ioctl::Opcode = 0x5422;
        // A session leader giving up its terminal would send SIGHUP to the foreground group,
        // itself included: leave that case alone.
        // The session read from /proc, not getsid(2) (see `own_group_and_session`); unknown
        // means "leave the terminal alone".
        match crate::procfs::own_group_and_session() {
            Some((_, sid)) if sid != rustix::process::getpid().as_raw_nonzero().get() as u32 => {}
            _ => return,
        }
        let Ok(tty) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty") else { return };
        // SAFETY: TIOCNOTTY takes no argument; it only drops this process's controlling terminal.
        match unsafe { rustix::ioctl::ioctl(&tty, rustix::ioctl::NoArg::<TIOCNOTTY>::new()) } {
            Ok(()) => log::info!("gave up the controlling terminal: tasks cannot read or write /dev/tty"),
            Err(e) => log::warn!("cannot give up the controlling terminal: {e}; tasks may prompt on it"),
        }
    }
}

fn signal_text(sig: Option<i32>) -> &'static str {
    match sig {
        Some(SIGTERM) => "SIGTERM",
        Some(SIGINT) => "SIGINT",
        Some(SIGHUP) => "SIGHUP",
        _ => "a signal",
    }
}

/// Whether `sig` was ignored when the agent started (as `nohup` does for SIGHUP), from the
/// `SigIgn` mask in /proc/self/status.
fn inherited_ignore(sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    let mask =
        status.lines().find_map(|l| l.strip_prefix("SigIgn:")).and_then(|m| u64::from_str_radix(m.trim(), 16).ok());
    mask.is_some_and(|m| sig >= 1 && m & (1 << (sig - 1)) != 0)
}

/// Starts the `signals` thread: SIGTERM, SIGINT and SIGHUP (a closed terminal) arrive on the
/// returned channel, and each drains the agent. SIGHUP stays ignored when it was at start
/// (`nohup`).
fn spawn_signal_thread() -> Result<(crossbeam_channel::Receiver<i32>, Worker), StartError> {
    let mut handled = vec![SIGTERM, SIGINT];
    if !inherited_ignore(SIGHUP) {
        handled.push(SIGHUP);
    }
    let mut signals = Signals::new(handled).map_err(StartError::part("signal handling"))?;
    let handle = signals.handle();
    let (tx, rx) = crossbeam_channel::unbounded();
    let thread = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                let _ = tx.send(sig);
            }
        })
        .map_err(StartError::part("the signal thread"))?;
    Ok((rx, Worker::new("signals", move || handle.close(), vec![thread])))
}

/// Lets running tasks finish for up to `SHUTDOWN_TIMEOUT`, then stops their groups: SIGTERM,
/// SIGKILL after `KILL_GRACE`. A second signal skips the wait and the grace.
fn drain_tasks(reg: &Arc<Registry>, cfg: &Config, signals: &crossbeam_channel::Receiver<i32>) {
    let deadline = Instant::now() + cfg.shutdown_timeout;
    let mut hurry = false;
    while Instant::now() < deadline {
        if reg.wait_idle((Instant::now() + Duration::from_millis(100)).min(deadline)) {
            return;
        }
        if let Ok(sig) = signals.try_recv() {
            log::warn!("received {} again: stopping running tasks now", signal_text(Some(sig)));
            hurry = true;
            break;
        }
    }
    let running = reg.running_tasks();
    if running.is_empty() {
        return;
    }
    log::warn!("stopping {} task(s) still running", running.len());
    let why = "the agent shut down while the task was running".to_string();
    for task in &running {
        let _ = crate::tasks::stop(reg, task, Stop::Shutdown { why: why.clone(), hurry });
    }
    let grace_end = Instant::now() + if hurry { Duration::ZERO } else { cfg.kill_grace } + Duration::from_secs(2);
    // A second signal during the grace ends it.
    let mut idle = false;
    while !idle && Instant::now() < grace_end {
        idle = reg.wait_idle((Instant::now() + Duration::from_millis(100)).min(grace_end));
        if let Some(sig) = (!idle && !hurry).then(|| signals.try_recv().ok()).flatten() {
            log::warn!("received {} again: killing the running tasks now", signal_text(Some(sig)));
            for task in &running {
                task.signal_group(Signal::KILL);
            }
            hurry = true;
        }
    }
    if !idle {
        for task in &running {
            task.signal_group(Signal::KILL);
        }
        reg.wait_idle(Instant::now() + Duration::from_secs(2));
    }
}

fn log_summary(cfg: &Config, port: u16, next_id: u64) {
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    log::info!(
        "codara-agent {} listening on {scheme}://{}:{port} (HTTP API and WebSocket)",
        env!("CARGO_PKG_VERSION"),
        cfg.bind_address
    );
    if let Some(t) = &cfg.tls {
        let mtls = t.client_ca.as_ref().map(|ca| format!("; client certificates required, signed by {}", ca.display()));
        log::info!("TLS: certificate {}, key {}{}", t.cert.display(), t.key.display(), mtls.unwrap_or_default());
    }
    log::info!(
        "limits: {} concurrent tasks, CPU {}%, memory {}%, timeout {}, kill grace {} ms, history {}",
        cfg.max_concurrent_tasks,
        cfg.max_cpu_percent,
        cfg.max_memory_percent,
        cfg.task_timeout.map_or("none".to_string(), |d| format!("{} ms", d.as_millis())),
        cfg.kill_grace.as_millis(),
        cfg.task_history
    );
    log::info!("data dir {}; next task id {next_id}", cfg.data_dir.display());
    match &cfg.secret_source {
        SecretSource::Environment => log::info!("cluster secret: from CLUSTER_SECRET"),
        SecretSource::File { path, generated: true } => {
            log::info!("cluster secret: generated and stored in {} (mode 0600)", path.display())
        }
        SecretSource::File { path, generated: false } => log::info!("cluster secret: read from {}", path.display()),
    }
    if let Some(f) = &cfg.env_file {
        log::info!("settings read from {}", f.display());
    }
    if let Some(user) = &cfg.task_user {
        log::info!("tasks run as {user}, home {}", user.home.display());
    }
}

/// With a `TASK_USER`, a warning for each of the agent's own files that user can read.
fn warn_readable_by_task_user(cfg: &Config) {
    let Some(user) = &cfg.task_user else { return };
    let mut paths = vec![("DATA_DIR", cfg.data_dir.as_path())];
    if let Some(env) = &cfg.env_file {
        paths.push(("the settings file", env.as_path()));
    }
    if let SecretSource::File { path, .. } = &cfg.secret_source {
        paths.push(("the cluster secret", path.as_path()));
    }
    crate::task_user::warn_readable(user, &paths);
}

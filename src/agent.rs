//! The agent's main loop: starts the worker threads, then reacts to a closed
//! set of [`Event`]s until it is told to stop, and stops everything in order.
//!
//! Worker threads never decide the fate of the process or touch a task
//! themselves; they send an event here. The task table lives on this thread
//! alone, and every exit path (signal, rejected key) goes through the same
//! shutdown sequence of PROTOCOL.md section 8.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{EXIT_CONFIG, Error, Result};
use crate::event::Event;
use crate::health::Responder;
use crate::heartbeat::Heartbeat;
use crate::ledger::Origin;
use crate::manager::{Capabilities, Manager};
use crate::metrics::Sampler;
use crate::notify::Notifier;
use crate::outbox::Outbox;
use crate::state::StateDir;
use crate::stop::Stop;
use crate::supervisor::Supervisor;
use crate::tasks::{Settings, Tasks};
use crate::telemetry::{Telemetry, Worker};

/// How often the main loop wakes up with nothing to do.
const TICK: Duration = Duration::from_millis(500);
/// How long shutdown waits for worker threads before exiting anyway.
const JOIN_GRACE: Duration = Duration::from_secs(1);
/// Section 8: the outbox gets this long to drain at shutdown.
const DRAIN_TIME: Duration = Duration::from_secs(2);

struct Threads {
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    fn spawn(&mut self, name: &str, body: impl FnOnce() + Send + 'static) -> Result<()> {
        self.handles.push(spawn(name, body)?);
        Ok(())
    }
}

pub fn run(config: Config) -> Result<i32> {
    let started = Instant::now();
    // A program on trial was given a SIGALRM as a backstop in case it never
    // runs this code (section 4.3); this one keeps its own clock instead.
    nix::unistd::alarm::cancel();
    let mut handover = crate::handover::take(&config.state_dir);
    if let Some(program) = crate::programs::at_start(&config.state_dir, handover.is_some()) {
        run_kept(&program);
    }
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    // Until it is ready, a program on trial writes its standard error to a
    // file (section 4.3); one taking over again puts it back at once.
    // What the program on trial wrote there goes into the failed update's
    // report.
    let mut trial_stderr = handover.as_ref().and_then(|h| h.saved_stderr);
    if let Some(fd) = trial_stderr
        && let Some(h) = handover.as_mut().filter(|h| h.rollback.is_some())
    {
        h.trial_stderr = Some(crate::handover::restore_stderr(
            fd,
            &crate::programs::trial_stderr_path(&config.state_dir),
        ));
        trial_stderr = None;
    }
    // Section 4.3 step 4: until this image has taken the children over, a
    // start-up failure of an image on trial hands the process back, with
    // the handover as it came, instead of exiting.
    macro_rules! or_hand_back {
        ($result:expr) => {
            match $result {
                Ok(value) => value,
                Err(e) => {
                    return Err(crate::handover::hand_back_unstarted(
                        &config.state_dir,
                        handover.take(),
                        e,
                    ));
                }
            }
        };
    }
    let notifier = Notifier::from_env();
    let state = or_hand_back!(StateDir::open(&config.state_dir));
    or_hand_back!(crate::spool::prepare(state.root()));
    // Before any thread or child exists: the agent moves into its own leaf
    // of the delegated subtree (section 4.2), or runs without cgroups.
    let cgroups = match crate::cgroup::Cgroups::set_up(std::path::Path::new("/")) {
        Ok(c) => {
            log::info!("tasks run in cgroups under {}", c.base().display());
            Some(c)
        }
        Err(e) => {
            log::info!("tasks run without cgroups (limits are rejected): {e}");
            None
        }
    };
    let has_cgroups = cgroups.is_some();
    let (events, inbox) = mpsc::channel();
    or_hand_back!(spawn_signal_thread(events.clone()));

    let telemetry = Arc::new(
        Telemetry::new(
            crate::ids::new_uuid(),
            config.agent_name.clone(),
            config.manager_url.clone(),
            config.heartbeat_interval,
            config.poll_wait,
            config.pushgateway_url.clone(),
        )
        .with_node_metrics(config.metrics),
    );
    let _ = telemetry.proxy.set(config.proxy.clone());
    // Intake (claims, spool) stops first at shutdown; the rest after the
    // outbox had its chance to drain.
    let stop_intake = Stop::new();
    let stop = Stop::new();
    let mut threads = Threads {
        handles: Vec::new(),
    };

    // The responder first: /health and /ready should answer as early as
    // possible, and a port conflict should fail before anything else starts.
    let mut listening = None;
    let mut listener_fd = None;
    let inherited = handover.as_ref().and_then(|h| h.listener);
    if let Some(addr) = config.http_addr {
        let responder = match inherited
            .and_then(|fd| Responder::inherit(fd, telemetry.clone(), stop.clone()))
        {
            Some(r) => r,
            None => or_hand_back!(Responder::bind(addr, telemetry.clone(), stop.clone())),
        };
        listening = responder.local_addr();
        listener_fd = Some(responder.raw_fd());
        or_hand_back!(threads.spawn("health", move || responder.run()));
    }
    {
        let telemetry = telemetry.clone();
        let stop = stop.clone();
        or_hand_back!(threads.spawn("metrics", move || metrics_loop(&telemetry, &stop)));
    }

    // One trust set for every link: the system store is read once.
    let (tls, roots) = or_hand_back!(crate::tls::client_config(
        &config.tls,
        std::path::Path::new("/")
    ));
    log::debug!("TLS trusts {roots}");
    let supervisor = {
        let events = events.clone();
        or_hand_back!(
            Supervisor::start(state.root().to_string_lossy().into_owned(), move |exit| {
                let _ = events.send(Event::ChildExited(exit));
            })
            .map_err(|e| Error::Internal {
                what: "supervisor",
                message: e.to_string(),
            })
        )
    };
    let outbox = match config.manager_url {
        Some(_) => Some(Arc::new(or_hand_back!(Outbox::open(state.root())))),
        None => None,
    };
    // Made before the children are taken over, so that what fails after
    // that is only the start of a thread.
    let manager = match config.manager_url {
        Some(_) => Some(or_hand_back!(Manager::new(&config, tls.clone()))),
        None => None,
    };
    or_hand_back!(crate::handover::broken_start("state"));
    let iperf3_version = crate::supervisor::iperf3_version(&config.iperf3);
    let tasks = Tasks::open(
        Settings {
            iperf3: config.iperf3.clone(),
            iperf3_version: iperf3_version.clone(),
            stop_grace: config.stop_grace,
            max_tasks: config.max_tasks,
            state_dir: state.root().to_path_buf(),
            config_dir: config.config_dir.clone(),
            collector_cmd: config.collector_cmd.clone(),
            allow_http_config: config.allow_http_config,
            cgroups,
        },
        outbox.clone(),
        supervisor,
        telemetry.clone(),
        crate::fetch::Fetcher::new(
            tls.clone(),
            crate::fetch::UrlPolicy {
                allow_http: config.allow_http_config,
                allow_link_local: config.allow_link_local_config,
            },
            config.proxy.clone(),
        ),
        events.clone(),
        handover.as_mut(),
    );
    let mut tasks = or_hand_back!(tasks);
    // From here the children are this image's: a start-up failure hands
    // them back through the table, as a handover that timed out does.
    let mut update = UpdateContext {
        state_dir: state.root().to_path_buf(),
        listener: listener_fd,
        trial_stderr,
    };
    macro_rules! or_hand_back_taken {
        ($result:expr) => {
            match $result {
                Ok(value) => value,
                Err(e) => return Err(update.start_failed(&mut tasks, &inbox, e)),
            }
        };
    }

    let where_ = listening
        .map(|a| format!("health responder on http://{a}"))
        .unwrap_or_else(|| "health responder off".into());
    match &config.manager_url {
        None => log::info!(
            "outpost {} started in manager-less mode (no OUTPOST_MANAGER_URL); {where_}; state in {}",
            crate::VERSION,
            state.root().display()
        ),
        Some(url) => log::info!(
            "outpost {} started for manager {url} as {}; {where_}; state in {}",
            crate::VERSION,
            config.agent_name,
            state.root().display()
        ),
    }
    {
        let (dir, t, e, s) = (
            state.root().to_path_buf(),
            telemetry.clone(),
            events.clone(),
            stop_intake.clone(),
        );
        or_hand_back_taken!(threads.spawn("spool", move || crate::spool::run(dir, t, e, s)));
    }
    {
        let (t, s) = (telemetry.clone(), stop.clone());
        let proxy = config.proxy.clone();
        or_hand_back_taken!(threads.spawn("push", move || {
            crate::pushgateway::run(t, tls, proxy, s)
        }));
    }
    if let Some(manager) = manager {
        if let Some(outbox) = &outbox {
            let (manager, o, t, s) = (
                manager.clone(),
                outbox.clone(),
                telemetry.clone(),
                stop.clone(),
            );
            or_hand_back_taken!(threads.spawn("outbox", move || {
                crate::outbox::run_sender(o, manager, t, s)
            }));
        }
        let heartbeat = Heartbeat {
            manager: manager.clone(),
            telemetry: telemetry.clone(),
            state: state.clone(),
            events: events.clone(),
            stop: stop.clone(),
            capabilities: capabilities_of(&config, iperf3_version.clone(), has_cgroups),
        };
        or_hand_back_taken!(threads.spawn("heartbeat", move || heartbeat.run()));
        // Last: a claim taken is never left in the channel by a start-up
        // that fails.
        let (t, e, s) = (telemetry.clone(), events.clone(), stop_intake.clone());
        or_hand_back_taken!(threads.spawn("claim", move || crate::claim::run(manager, t, e, s)));
    }
    or_hand_back_taken!(crate::handover::broken_start("workers"));
    log::debug!("started in {:?}", started.elapsed());
    if let Some(h) = &handover {
        // Serving /health (the responder runs) and supervising every child
        // handed over (adopted by the table above).
        log::info!(
            "handover from version {}: serving and supervising {} task(s) {:.1} ms after the exec",
            h.from.version,
            tasks.running_count(),
            crate::handover::since_exec(h).as_secs_f64() * 1000.0
        );
    }
    drop(handover);
    if config.manager_url.is_none() {
        notifier.ready();
        update.ready(&mut tasks);
    }

    let exit_code = main_loop(&inbox, &telemetry, &notifier, &mut tasks, &mut update);

    // Section 8, in order: stop claiming, stop children, record states,
    // let the outbox drain, exit.
    notifier.stopping();
    notifier.status("stopping: ending tasks and draining the outbox");
    telemetry.stopping.store(true, Ordering::Relaxed);
    stop_intake.request();
    tasks.begin_shutdown();
    let deadline = Instant::now() + config.stop_grace + Duration::from_secs(1);
    while !tasks.all_processes_gone() && Instant::now() < deadline {
        if let Ok(Event::ChildExited(exit)) = inbox.recv_timeout(Duration::from_millis(50)) {
            tasks.on_exit(exit);
        }
    }
    tasks.finish_shutdown();
    tasks.end_probation(true);
    if let Some(fd) = update.trial_stderr.take() {
        crate::handover::restore_stderr(fd, &crate::programs::trial_stderr_path(state.root()));
    }
    if let Some(outbox) = &outbox
        && telemetry.session().registered
        && !outbox.wait_empty(Instant::now() + DRAIN_TIME)
    {
        log::warn!(
            "{} status update(s) not yet delivered; they stay in the outbox for the next start",
            outbox.len()
        );
    }
    stop.request();
    join(threads);
    log::info!("stopped");
    Ok(exit_code)
}

/// The one loop that decides what the process does next.
fn main_loop(
    inbox: &Receiver<Event>,
    telemetry: &Telemetry,
    notifier: &Notifier,
    tasks: &mut Tasks,
    update: &mut UpdateContext,
) -> i32 {
    let mut watchdog = Watchdog::new(notifier.watchdog_interval());
    let mut last_status = String::new();
    let mut next_tick = Instant::now();
    // An event taken off the channel while a handover was being tried.
    let mut pending: Option<Event> = None;
    loop {
        telemetry.progress(Worker::Main, TICK * 4);
        let wait = watchdog
            .next_ping()
            .min(next_tick.saturating_duration_since(Instant::now()));
        let event = match pending.take() {
            Some(event) => Ok(event),
            None => inbox.recv_timeout(wait),
        };
        match event {
            Ok(Event::Shutdown { signal }) => {
                log::info!("{signal} received: stopping");
                return 0;
            }
            Ok(Event::Registered { agent_id }) => {
                log::debug!("session established as {agent_id}");
                notifier.ready();
                update.ready(tasks);
            }
            Ok(Event::KeyRejected { status }) => {
                let error = Error::KeyRejected { status };
                // A new version on trial that the manager turns away did not
                // start (section 4.3): the previous one takes over again,
                // and meets the same key.
                if !tasks.cannot_take_over(format!("its registration failed: {error}")) {
                    log::error!("{error}");
                    return EXIT_CONFIG;
                }
                next_tick = Instant::now();
            }
            Ok(Event::Claimed {
                tasks: claimed,
                taken,
            }) => {
                for task in &claimed {
                    let _ = tasks.accept(task, Origin::Manager);
                }
                tasks.refresh_view(true);
                let _ = taken.send(());
            }
            Ok(Event::Spooled { path, task }) => {
                match task
                    .map_err(|why| why.to_string())
                    .and_then(|t| tasks.accept(&t, Origin::Spool))
                {
                    Ok(crate::tasks::Intake::Taken) => crate::spool::consumed(&path),
                    // Left in inbox/; the spool hands it again once the
                    // state directory can be written.
                    Ok(crate::tasks::Intake::Deferred) => {}
                    Err(why) => crate::spool::reject(&path, &why),
                }
                tasks.refresh_view(true);
            }
            Ok(Event::ChildExited(exit)) => tasks.on_exit(exit),
            Ok(Event::LeftoversGone { task_id }) => tasks.leftovers_gone(&task_id),
            Ok(Event::ConfigFetched { task_id, result }) => tasks.config_ready(&task_id, result),
            Ok(Event::UpdatePrepared { task_id, result }) => {
                tasks.update_prepared(&task_id, result)
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Impossible while `run` holds a sender; stop rather than spin.
            Err(RecvTimeoutError::Disconnected) => return 1,
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + tasks.tick();
            tasks.end_probation(false);
            if let Some((why, id, from, to)) = tasks.rollback_due() {
                pending = update.hand_back(tasks, inbox, &id, why, from, to);
                if pending.is_some() {
                    next_tick = Instant::now();
                }
            }
        }
        if pending.is_none()
            && let Some((id, origin, program)) = tasks.handover_due()
        {
            pending = update.hand_over(tasks, inbox, &id, origin, program);
        }
        watchdog.tick(telemetry, notifier);
        let status = telemetry.status_line();
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
    }
}

/// What the main loop needs for section 4.3's handovers.
struct UpdateContext {
    state_dir: std::path::PathBuf,
    /// The health responder's listening socket, passed on across exec.
    listener: Option<i32>,
    /// The agent's standard error while this image is on trial.
    trial_stderr: Option<i32>,
}

impl UpdateContext {
    /// This image is ready: an update on trial succeeded, and standard
    /// error goes back where it belongs.
    fn ready(&mut self, tasks: &mut Tasks) {
        if tasks.update_ready()
            && let Some(fd) = self.trial_stderr.take()
        {
            crate::handover::restore_stderr(
                fd,
                &crate::programs::trial_stderr_path(&self.state_dir),
            );
        }
    }

    /// Step 3 of section 4.3: exec `program` in this process with every
    /// child. Returns only if that did not happen: with an event that came
    /// in meanwhile (the handover waits for it to be handled), or after the
    /// update failed (everything else goes on).
    fn hand_over(
        &mut self,
        tasks: &mut Tasks,
        inbox: &Receiver<Event>,
        id: &str,
        origin: crate::ledger::Origin,
        program: crate::programs::Program,
    ) -> Option<Event> {
        use crate::programs;
        let (children, resume) = match self.pause(tasks, inbox) {
            Ok(paused) => paused,
            Err(Some(event)) => return Some(event),
            Err(None) => {
                tasks.handover_failed(id, crate::handover::HandoverError::Supervisor.to_string());
                return None;
            }
        };
        let from = programs::running_in(&self.state_dir);
        let mut record = programs::load(&self.state_dir);
        record.trial = Some(programs::Trial {
            task_id: id.to_string(),
            from: from.clone(),
            to: program.clone(),
            ready: false,
            since: crate::tasks::unix_now(),
        });
        // A new agent_update asked for it: a version that failed before
        // may run again.
        record.failed.retain(|s| *s != program.sha256);
        if let Err(e) = programs::save(&self.state_dir, &record) {
            let _ = resume.send(true);
            tasks.handover_failed(id, format!("cannot record the trial: {e}"));
            return None;
        }
        let saved = crate::handover::divert_stderr(&programs::trial_stderr_path(&self.state_dir));
        // The backstop for a program that never runs our code (it cannot
        // hand back by itself): SIGALRM ends it, and the next start puts
        // the previous version back. Ours cancels it at once.
        nix::unistd::alarm::set(programs::READY_WITHIN.as_secs() as u32);
        let mut handover = crate::handover::Handover::new(id, origin, from, program.clone());
        handover.saved_stderr = saved;
        let why = self.exec(tasks, handover, children, &program.path);
        let _ = resume.send(true);
        nix::unistd::alarm::cancel();
        if let Some(fd) = saved {
            crate::handover::restore_stderr(fd, &programs::trial_stderr_path(&self.state_dir));
        }
        let mut record = programs::load(&self.state_dir);
        record.trial = None;
        if let Err(e) = programs::save(&self.state_dir, &record) {
            log::error!("{e}");
        }
        tasks.handover_failed(id, why.to_string());
        None
    }

    /// Section 4.3 step 4: this image, on trial, could not take over; the
    /// previous program takes the process back, with every child.
    fn hand_back(
        &mut self,
        tasks: &mut Tasks,
        inbox: &Receiver<Event>,
        id: &str,
        why: String,
        from: crate::programs::Program,
        to: crate::programs::Program,
    ) -> Option<Event> {
        let (children, resume) = match self.pause(tasks, inbox) {
            Ok(paused) => paused,
            Err(event) => return event,
        };
        log::error!(task_id = id; "agent_update: {why}; handing back to version {}", from.version);
        let origin = tasks
            .origin_of(id)
            .unwrap_or(crate::ledger::Origin::Manager);
        let mut handover = crate::handover::Handover::new(id, origin, from.clone(), to);
        handover.rollback = Some(why.clone());
        handover.saved_stderr = self.trial_stderr;
        let e = self.exec(tasks, handover, children, &from.path);
        let _ = resume.send(true);
        // Nothing to go back to: this version stays, and the update failed.
        if let Some(fd) = self.trial_stderr.take() {
            crate::handover::restore_stderr(
                fd,
                &crate::programs::trial_stderr_path(&self.state_dir),
            );
        }
        tasks.end_probation(true);
        tasks.update_failed(
            id,
            crate::update::ErrorKind::UpdateFailed,
            format!(
                "version {} {why}, and handing back to version {} failed: {e}",
                crate::VERSION,
                from.version
            ),
            None,
        );
        None
    }

    /// Section 4.3 step 4 once this image has taken the children over: a
    /// start-up failure of an image on trial hands them back through the
    /// table. Returns `error` when this image is not on trial or handing
    /// back failed; the process then exits with it.
    fn start_failed(&mut self, tasks: &mut Tasks, inbox: &Receiver<Event>, error: Error) -> Error {
        if !tasks.cannot_take_over(format!("its start-up failed: {error}")) {
            return error;
        }
        while let Some((why, id, from, to)) = tasks.rollback_due() {
            match self.hand_back(tasks, inbox, &id, why, from, to) {
                // Recorded by this image first, as the main loop would.
                Some(Event::ChildExited(exit)) => tasks.on_exit(exit),
                // Nothing else needs this image: the claim thread starts
                // last, a spool file stays in inbox/ for the next image.
                Some(_) => {}
                // Handing back failed; the update has failed with why.
                None => break,
            }
        }
        error
    }

    /// Pauses the supervisor with every child exported. An event already
    /// in (a child's exit the supervisor reported, a claim) must be handled
    /// by this image first: `Err(Some(event))`, the supervisor resumed.
    /// `Err(None)`: the supervisor did not answer.
    #[allow(clippy::type_complexity)]
    fn pause(
        &mut self,
        tasks: &mut Tasks,
        inbox: &Receiver<Event>,
    ) -> std::result::Result<(Vec<crate::supervisor::Inherited>, Sender<bool>), Option<Event>> {
        if let Ok(event) = inbox.try_recv() {
            return Err(Some(event));
        }
        let (children, resume) = tasks.export_children().ok_or(None)?;
        // An exit reported in the instant before the pause is in the
        // channel now, and no later one can be.
        if let Ok(event) = inbox.try_recv() {
            let _ = resume.send(true);
            return Err(Some(event));
        }
        Ok((children, resume))
    }

    fn exec(
        &mut self,
        tasks: &mut Tasks,
        mut handover: crate::handover::Handover,
        children: Vec<crate::supervisor::Inherited>,
        program: &std::path::Path,
    ) -> crate::handover::HandoverError {
        handover.children = children;
        handover.tasks = tasks.export();
        handover.listener = self.listener;
        log::info!(
            "handing over {} task(s) and {} process(es) to {}",
            handover.tasks.len(),
            handover.children.len(),
            program.display()
        );
        log::logger().flush();
        crate::handover::exec(&self.state_dir, &mut handover, program)
    }
}

/// Start-up (section 4.3): a kept program newer than this installed one
/// runs instead, in this process, before anything else happens.
fn run_kept(program: &crate::programs::Program) {
    use std::os::unix::ffi::OsStrExt;
    log::info!(
        "running version {} kept in {} instead of this {}",
        program.version,
        program.path.display(),
        crate::VERSION
    );
    let cstring = |b: &[u8]| std::ffi::CString::new(b).unwrap_or_default();
    let path = cstring(program.path.as_os_str().as_bytes());
    let mut argv = vec![path.clone()];
    argv.extend(std::env::args_os().skip(1).map(|a| cstring(a.as_bytes())));
    let Err(e) = nix::unistd::execv(&path, &argv);
    log::error!(
        "cannot run {}: {}; this version {} runs",
        program.path.display(),
        e.desc(),
        crate::VERSION
    );
}

/// Pings the systemd watchdog at half its period, but only while every
/// worker keeps its progress promise: a wedged thread stops the pings and
/// systemd restarts the agent. A manager outage is not a stall (the
/// heartbeat thread is waiting by design then), so it never stops them.
struct Watchdog {
    interval: Option<Duration>,
    next: Instant,
    stalled: Option<Worker>,
}

impl Watchdog {
    fn new(interval: Option<Duration>) -> Watchdog {
        Watchdog {
            interval,
            next: Instant::now(),
            stalled: None,
        }
    }

    fn next_ping(&self) -> Duration {
        match self.interval {
            Some(_) => self.next.saturating_duration_since(Instant::now()),
            None => TICK,
        }
    }

    fn tick(&mut self, telemetry: &Telemetry, notifier: &Notifier) {
        let stalled = telemetry.stalled_worker();
        if stalled != self.stalled {
            match stalled {
                Some(worker) => log::error!(
                    "the {} thread has stopped making progress; withholding watchdog pings",
                    worker.label()
                ),
                None => log::info!("all threads are making progress again"),
            }
            self.stalled = stalled;
        }
        let Some(interval) = self.interval else {
            return;
        };
        if stalled.is_none() && Instant::now() >= self.next {
            notifier.watchdog();
            self.next = Instant::now() + interval;
        }
    }
}

fn join(threads: Threads) {
    let deadline = Instant::now() + JOIN_GRACE;
    for handle in threads.handles {
        // A thread stuck in a blocking call (an HTTP request in flight) is
        // left behind: the process exits around it.
        while !handle.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
}

fn metrics_loop(telemetry: &Telemetry, stop: &Stop) {
    let mut sampler = Sampler::new("/");
    sampler.set_categories(telemetry.node_metrics());
    loop {
        let interval = telemetry.session().heartbeat_interval;
        telemetry.progress(Worker::Metrics, interval + Duration::from_secs(10));
        telemetry.set_snapshot(sampler.sample());
        if stop.wait(interval) {
            break;
        }
    }
    telemetry.retire(Worker::Metrics);
}

/// The first SIGTERM or SIGINT asks for a clean stop; a second one exits at
/// once (section 8).
fn spawn_signal_thread(events: Sender<Event>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| Error::Internal {
            what: "signal handling",
            message: e.to_string(),
        })?;
    let seen = AtomicU32::new(0);
    spawn("signals", move || {
        for signal in signals.forever() {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            if seen.fetch_add(1, Ordering::SeqCst) > 0 {
                log::warn!("second {name}: exiting at once");
                std::process::exit(1);
            }
            let _ = events.send(Event::Shutdown { signal: name });
        }
    })?;
    Ok(())
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 * 1024)
        .spawn(body)
        .map_err(|e| Error::Internal {
            what: "thread start",
            message: format!("{name}: {e}"),
        })
}

/// What this agent can do, as register announces it.
fn capabilities_of(config: &Config, iperf3_version: Option<String>, cgroups: bool) -> Capabilities {
    Capabilities {
        task_types: crate::tasks::payload::TYPES.to_vec(),
        iperf3_version,
        collector_available: config
            .collector_cmd
            .first()
            .is_some_and(|p| crate::supervisor::resolve_program(p).is_some()),
        max_concurrent_tasks: config.max_tasks,
        cgroups,
    }
}

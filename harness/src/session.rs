//! Runs and their memo: every (scenario, variant, backend, strategy) is run
//! at most once per process, and only one backend run happens at a time.
//!
//! Under `cargo test` all trials share one [`Session`], so the checks of one
//! scenario never repeat a forward pass; under cargo-nextest (a process per
//! trial) a trial computes only the runs its own check compares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::path::Path;

use layerdrift_backends::weights::read_safetensors;
use layerdrift_backends::{
    Backend, BackendError, BackendId, BackendInfo, Checkpoints, HostTensor, RunRequest, Weights,
    generate_input,
};

use crate::env::env;
use crate::scenario::{InputSource, Scenario, ScenarioErrors, WeightSource};

/// One finished backend run.
#[derive(Debug)]
pub struct Run {
    /// The observed rows after every layer.
    pub checkpoints: Checkpoints,
    /// Wall time of the backend call (weights upload included).
    pub wall: Duration,
    /// Who ran it.
    pub info: BackendInfo,
}

/// Why a run produced nothing.
#[derive(Clone, Debug)]
pub enum RunError {
    /// It cannot run here (backend not compiled in, no device, unsupported
    /// dtype or op): an ignored trial with this reason.
    Skip(String),
    /// It failed: a failed trial with this message.
    Fail(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Skip(s) | RunError::Fail(s) => f.write_str(s),
        }
    }
}

type Slot<T> = Arc<OnceLock<T>>;

/// A memo: one slot per key, filled once by whichever thread gets there first.
type Memo<T> = Mutex<HashMap<String, Slot<T>>>;

/// A process's backends and its memo of runs.
pub struct Session {
    backends: Vec<Arc<dyn Backend>>,
    runs: Memo<Result<Arc<Run>, RunError>>,
    weights: Memo<Result<Arc<Weights>, String>>,
    inputs: Memo<Result<Arc<HostTensor>, String>>,
    probes: Memo<Option<(String, String)>>,
    /// One backend run at a time: runs are multi-threaded already, and a GPU
    /// must not run two heavy trials at once.
    gate: Mutex<()>,
}

/// The id of the f64 oracle.
pub const ORACLE: BackendId = BackendId::ORACLE;

fn slot<T>(map: &Memo<T>, key: String) -> Slot<T> {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .clone()
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    /// A session over every backend this build knows.
    pub fn new() -> Session {
        Session {
            backends: layerdrift_backends::registry()
                .into_iter()
                .map(Arc::from)
                .collect(),
            runs: Mutex::default(),
            weights: Mutex::default(),
            inputs: Mutex::default(),
            probes: Mutex::default(),
            gate: Mutex::new(()),
        }
    }

    /// Every backend, in registry order.
    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.backends
    }

    /// Every backend id this build knows (compiled in or not), in registry
    /// order. Never opens a device.
    pub fn known_ids(&self) -> Vec<BackendId> {
        self.backends.iter().map(|b| b.id()).collect()
    }

    /// Loads and validates a scenario against this build's backends and the
    /// machine's memory limit.
    pub fn load(&self, path: &Path) -> Result<Scenario, ScenarioErrors> {
        Scenario::load(path, &self.known_ids(), env().memory_limit)
    }

    /// The backend with id `id`.
    pub fn backend(&self, id: BackendId) -> Option<&Arc<dyn Backend>> {
        self.backends.iter().find(|b| b.id() == id)
    }

    /// The oracle (always built).
    pub fn oracle(&self) -> &Arc<dyn Backend> {
        self.backend(ORACLE)
            .expect("the registry always holds the oracle")
    }

    /// The backends a scenario runs (its names × devices, in registry order),
    /// without the oracle; `LAYERDRIFT_DEVICES` narrows the devices further.
    pub fn scenario_backends(&self, s: &Scenario) -> Vec<Arc<dyn Backend>> {
        let only = env().devices.as_ref();
        self.backends
            .iter()
            .filter(|b| {
                let id = b.id();
                !id.is_oracle()
                    && s.backends.iter().any(|n| n == id.name)
                    && s.devices.contains(&id.device)
                    && only.is_none_or(|o| o.contains(&id.device))
            })
            .cloned()
            .collect()
    }

    fn weights(&self, s: &Scenario, v: usize) -> Result<Arc<Weights>, String> {
        let model = &s.variants[v].model;
        let shapes: Vec<_> = model
            .parameters()
            .into_iter()
            .map(|p| (p.name, p.shape))
            .collect();
        let key = format!("{:?}{:?}", s.weights, shapes);
        slot(&self.weights, key)
            .get_or_init(|| {
                match &s.weights {
                    WeightSource::Init { seed, std } => Ok(Weights::init(model, *seed, *std)),
                    WeightSource::File(f) => Weights::load(model, f).map_err(|e| e.to_string()),
                }
                .map(Arc::new)
            })
            .clone()
    }

    fn input(&self, s: &Scenario, v: usize) -> Result<Arc<HostTensor>, String> {
        let var = &s.variants[v];
        let dim = var.model.dim();
        let key = format!("{:?}/{}/{}/{dim}", s.input, var.batch, var.seq);
        slot(&self.inputs, key)
            .get_or_init(|| match &s.input {
                InputSource::Seed(seed) => {
                    Ok(Arc::new(generate_input(var.batch, var.seq, dim, *seed)))
                }
                InputSource::File { path, tensor } => read_safetensors(path)
                    .map_err(|e| e.to_string())?
                    .remove(tensor)
                    .map(Arc::new)
                    .ok_or_else(|| format!("{}: no tensor `{tensor}`", path.display())),
            })
            .clone()
    }

    /// `(library version, probe hash)` of backend `id` on this machine
    /// (`layerdrift_backends::fingerprint`), once per process and under the
    /// same gate as every run; `None` where it cannot run here.
    pub fn probe(&self, id: BackendId) -> Option<(String, String)> {
        slot(&self.probes, id.to_string())
            .get_or_init(|| {
                let b = self.backend(id)?;
                b.available().ok()?;
                let _guard = self.gate.lock().unwrap_or_else(|e| e.into_inner());
                let hash = layerdrift_backends::fingerprint(b.as_ref()).ok()?;
                Some((b.info().version, hash))
            })
            .clone()
    }

    /// Why `backend` cannot run variant `v` of `s` with `strategy`, if it cannot.
    pub fn skip_reason(
        &self,
        s: &Scenario,
        v: usize,
        backend: BackendId,
        strategy: &str,
    ) -> Option<String> {
        let Some(b) = self.backend(backend) else {
            return Some(format!("no backend `{backend}` in this build"));
        };
        let var = &s.variants[v];
        let st = s.strategy(strategy)?;
        match b.can_run(&var.model, var.dtype, &st.schedule(var.seq)) {
            Err(e) if e.is_skip() => Some(e.to_string()),
            _ => None,
        }
    }

    /// Runs (or recalls) variant `v` of `s` on `backend` with `strategy`.
    pub fn run(
        &self,
        s: &Scenario,
        v: usize,
        backend: BackendId,
        strategy: &str,
    ) -> Result<Arc<Run>, RunError> {
        let key = format!("{}#{v}#{backend}#{strategy}", s.path.display());
        slot(&self.runs, key)
            .get_or_init(|| self.execute(s, v, backend, strategy))
            .clone()
    }

    fn execute(
        &self,
        s: &Scenario,
        v: usize,
        backend: BackendId,
        strategy: &str,
    ) -> Result<Arc<Run>, RunError> {
        let b = self
            .backend(backend)
            .ok_or_else(|| RunError::Skip(format!("no backend `{backend}` in this build")))?;
        let var = &s.variants[v];
        let st = s
            .strategy(strategy)
            .ok_or_else(|| RunError::Fail(format!("no strategy `{strategy}`")))?;
        let weights = self.weights(s, v).map_err(RunError::Fail)?;
        let input = self.input(s, v).map_err(RunError::Fail)?;
        let schedule = st.schedule(var.seq);
        let req = RunRequest {
            model: &var.model,
            weights: &weights,
            input: &input,
            dtype: var.dtype,
            schedule: &schedule,
            observed: &var.observed,
            threads: s.threads,
            batch_invariant: var.batch_invariant,
        };
        b.check(&req).map_err(to_run_error)?;
        let _guard = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        let checkpoints = b.run(&req).map_err(to_run_error)?;
        let wall = start.elapsed();
        Ok(Arc::new(Run {
            checkpoints,
            wall,
            info: b.info(),
        }))
    }
}

fn to_run_error(e: BackendError) -> RunError {
    if e.is_skip() {
        RunError::Skip(e.to_string())
    } else {
        RunError::Fail(e.to_string())
    }
}

//! Runs and their memo: every run is computed at most once per process,
//! keyed by what it computes (model, weights, input, dtype, schedule,
//! observed rows, execution, threads, backend — not by the file that asked
//! for it), and only one backend run happens at a time.
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
    Backend, BackendError, BackendId, BackendInfo, Checkpoints, Diagnose, HostTensor, RunRequest,
    Weights, generate_input,
};

use crate::baseline::{self, Baseline, Entry, VariantKey};
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
    baselines: Memo<Result<Arc<Baseline>, RunError>>,
    keys: Memo<Result<VariantKey, String>>,
    hashes: Memo<Result<u64, String>>,
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
            baselines: Mutex::default(),
            keys: Mutex::default(),
            hashes: Mutex::default(),
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
    /// Every file the scenario names is read far enough to refuse here
    /// what a run would only find later: the weights' and a checkpoint's
    /// headers and input files (by the scenario's own checks), and each
    /// baseline check's file, which must be a baseline of this scenario
    /// holding its variants (positioned at the check's `file:`).
    pub fn load(&self, path: &Path) -> Result<Scenario, ScenarioErrors> {
        let s = Scenario::load(path, &self.known_ids(), env().memory_limit)?;
        let labels: Vec<&str> = s.variants.iter().map(|v| v.label.as_str()).collect();
        let mut errors = Vec::new();
        for (i, c) in s.checks.iter().enumerate() {
            let Some(file) = &c.baseline_file else {
                continue;
            };
            // A missing file is no error (the check is skipped, saying how
            // to record it); one that cannot be read, or is another
            // scenario's, is.
            let problem = match self.baseline(&s, file) {
                Ok(b) => b.check_scenario(&s.name, &labels).err(),
                Err(RunError::Fail(e)) => Some(e),
                Err(RunError::Skip(_)) => None,
            };
            if let Some(e) = problem {
                errors.push(crate::scenario::ScenarioError {
                    file: s.path.clone(),
                    pos: c.file_at,
                    message: format!("checks[{i}].file: {e}"),
                });
            }
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(ScenarioErrors(errors))
        }
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

    /// Variant `v`'s weights (generated or read once, shared by variants of
    /// one model shape).
    pub fn weights(&self, s: &Scenario, v: usize) -> Result<Arc<Weights>, String> {
        let model = &s.variants[v].model;
        slot(&self.weights, Session::weights_key(s, v))
            .get_or_init(|| {
                match &s.weights {
                    WeightSource::Init { seed, std } => Ok(Weights::init(model, *seed, *std)),
                    WeightSource::File(f) => Weights::load(model, f).map_err(|e| e.to_string()),
                    WeightSource::Checkpoint { dir, layers } => {
                        layerdrift_backends::hf::load(dir, Some(*layers))
                            .map(|c| c.weights)
                            .map_err(|e| e.to_string())
                    }
                }
                .map(Arc::new)
            })
            .clone()
    }

    /// The memo key of variant `v`'s weights: their source (for a file or a
    /// checkpoint, with each file's size and modification time, so a file
    /// rewritten in between is read again) and shapes.
    fn weights_key(s: &Scenario, v: usize) -> String {
        let shapes: Vec<_> = s.variants[v]
            .model
            .parameters()
            .into_iter()
            .map(|p| (p.name, p.shape))
            .collect();
        let stamp = |f: &Path| {
            std::fs::metadata(f)
                .map(|m| format!("{}@{:?}", m.len(), m.modified().ok()))
                .unwrap_or_default()
        };
        let files = match &s.weights {
            WeightSource::Init { .. } => String::new(),
            WeightSource::File(f) => stamp(f),
            WeightSource::Checkpoint { dir, .. } => layerdrift_backends::hf::weight_files(dir)
                .unwrap_or_default()
                .iter()
                .chain(std::iter::once(&dir.join("config.json")))
                .map(|f| stamp(f))
                .collect::<Vec<_>>()
                .join(","),
        };
        format!("{:?}[{files}]{:?}", s.weights, shapes)
    }

    /// The memo key of variant `v`'s input: variants of one input shape
    /// share it.
    pub fn input_key(s: &Scenario, v: usize) -> String {
        let var = &s.variants[v];
        // A language model's input is its embedding of the ids: it depends
        // on the weights too.
        let embedding = match s.input {
            InputSource::Tokens(_) | InputSource::TokenFile(_) => {
                format!("/{}", Session::weights_key(s, v))
            }
            InputSource::Seed(_) | InputSource::File { .. } => String::new(),
        };
        format!(
            "{:?}/{}/{}/{}{embedding}",
            s.input,
            var.batch,
            var.seq,
            var.model.dim()
        )
    }

    /// Forgets variant `v`'s input (a run that needs it again regenerates or
    /// rereads it): `layerdrift run` calls it once no later run needs it, so
    /// one input at a time stays in memory.
    pub fn release_input(&self, s: &Scenario, v: usize) {
        self.inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Session::input_key(s, v));
    }

    /// Variant `v`'s `[batch, seq, dim]` input (generated or read once,
    /// until [`Session::release_input`]).
    pub fn input(&self, s: &Scenario, v: usize) -> Result<Arc<HostTensor>, String> {
        let var = &s.variants[v];
        let dim = var.model.dim();
        let key = Session::input_key(s, v);
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
                // A language model's input: its embeddings of the token ids,
                // looked up on the host (exact), so every backend starts
                // from the same bits.
                InputSource::Tokens(_) | InputSource::TokenFile(_) => {
                    let tokens = Session::tokens(s, v)?;
                    let weights = self.weights(s, v)?;
                    var.model.embed(&weights, &tokens).map(Arc::new)
                }
            })
            .clone()
    }

    /// Variant `v`'s token ids (a language model's input).
    pub fn tokens(s: &Scenario, v: usize) -> Result<layerdrift_backends::Tokens, String> {
        let var = &s.variants[v];
        let vocab = var
            .model
            .vocab()
            .ok_or_else(|| format!("a {} model reads no token ids", var.model.kind()))?;
        match &s.input {
            InputSource::Tokens(seed) => Ok(layerdrift_backends::Tokens::random(
                var.batch, var.seq, vocab, *seed,
            )),
            InputSource::TokenFile(path) => {
                crate::scenario::read_token_file(path, vocab, var.model.encoder())
            }
            InputSource::Seed(_) | InputSource::File { .. } => Err(format!(
                "a {} model reads token ids: give `input: {{ tokens: … }}`",
                var.model.kind()
            )),
        }
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

    /// The memo key of a run: what it computes, not where it was written —
    /// the backend, the model, the weights' and the input's keys, the dtype,
    /// the schedule (`computed`: a strategy name, or `observed rows` for
    /// the oracle's one run of a row-independent model), the observed rows,
    /// the execution mode, the threads and whether op checkpoints are
    /// recorded. Two scenario files describing the same run share it; one
    /// file edited between loads does not.
    fn run_key(s: &Scenario, v: usize, backend: BackendId, computed: &str) -> String {
        let var = &s.variants[v];
        let schedule = s.strategy(computed).map(|st| st.schedule_for(var));
        format!(
            "{backend}|{:?}|{}|{}|{:?}|{computed}:{schedule:?}|{:?}|{:?}|{:?}|ops={}",
            var.model,
            Session::weights_key(s, v),
            Session::input_key(s, v),
            var.dtype,
            var.observed,
            var.execution,
            s.threads,
            s.diagnose.ops.is_some()
        )
    }

    /// The identity of variant `v` of `s` as a baseline records it (its
    /// model, shapes, rows, and a hash of its weights and input).
    pub fn variant_key(&self, s: &Scenario, v: usize) -> Result<VariantKey, String> {
        let var = &s.variants[v];
        let key = format!(
            "{:?}|{}|{}|{:?}|{:?}|{:?}",
            var.model,
            Session::weights_key(s, v),
            Session::input_key(s, v),
            var.dtype,
            var.observed,
            var.execution
        );
        slot(&self.keys, key)
            .get_or_init(|| {
                // Variants of one model share weights: hash them once.
                let wkey = format!("weights {}", Session::weights_key(s, v));
                let w = slot(&self.hashes, wkey)
                    .get_or_init(|| Ok(baseline::weights_state(&*self.weights(s, v)?)))
                    .clone()?;
                let data = baseline::data_hash(w, &*self.input(s, v)?);
                Ok(VariantKey::new(&s.variants[v], data))
            })
            .clone()
    }

    /// The baseline at `path`, read once per process. A missing file is a
    /// skip (an ignored trial saying how to record it); a file that is not a
    /// baseline is a failure naming it.
    pub fn baseline(&self, s: &Scenario, path: &Path) -> Result<Arc<Baseline>, RunError> {
        slot(&self.baselines, path.display().to_string())
            .get_or_init(|| {
                if !path.exists() {
                    return Err(RunError::Skip(format!(
                        "no baseline at {}: record one with `layerdrift run {} --save-baseline {}`",
                        path.display(),
                        s.path.display(),
                        path.display()
                    )));
                }
                baseline::read(path).map(Arc::new).map_err(RunError::Fail)
            })
            .clone()
    }

    /// Why the baseline at `path` has nothing to compare with `backend`'s
    /// `strategy` run of variant `v` here, if it has not: no file, no such
    /// run in it, or a run recorded on another machine class. Cheap (no
    /// weights are generated); a baseline that is not one of this scenario
    /// is left to [`Session::baseline_entry`], which fails on it.
    pub fn baseline_skip(
        &self,
        s: &Scenario,
        v: usize,
        path: &Path,
        backend: BackendId,
        strategy: &str,
    ) -> Option<String> {
        let b = match self.baseline(s, path) {
            Err(RunError::Skip(why)) => return Some(why),
            Err(RunError::Fail(_)) => return None,
            Ok(b) => b,
        };
        let label = &s.variants[v].label;
        let id = backend.to_string();
        let Some(e) = b.run_of(&id, strategy, label) else {
            let any = b
                .entries
                .iter()
                .any(|e| e.info.backend == id && e.info.strategy == strategy);
            let which = if any {
                format!("{id}/{strategy} [{label}]")
            } else {
                format!("{id}/{strategy}")
            };
            return Some(format!(
                "{} has no run of {which} (it holds {}): save one with `layerdrift run --save-baseline`",
                path.display(),
                b.runs().join(", ")
            ));
        };
        let here = self.backend(backend)?.class();
        (e.info.class != here).then(|| {
            format!(
                "{}: {id}'s run was recorded on machine class `{}`, and here its class is `{here}`: a baseline compares runs of one machine class (save one here)",
                path.display(),
                e.info.class
            )
        })
    }

    /// The baseline's run of `backend`/`strategy` for variant `v`: a failure
    /// when the file is another scenario's or another computation's, a skip
    /// when it has no such run here (see [`Session::baseline_skip`]).
    pub fn baseline_entry(
        &self,
        s: &Scenario,
        v: usize,
        path: &Path,
        backend: BackendId,
        strategy: &str,
    ) -> Result<Arc<Entry>, RunError> {
        let b = self.baseline(s, path)?;
        let labels: Vec<&str> = s.variants.iter().map(|x| x.label.as_str()).collect();
        b.check_scenario(&s.name, &labels).map_err(RunError::Fail)?;
        let key = self.variant_key(s, v).map_err(RunError::Fail)?;
        // Another computation fails before a missing run or class skips.
        let found = b
            .entry(&key, &backend.to_string(), strategy)
            .map_err(RunError::Fail)?
            .cloned();
        if let Some(why) = self.baseline_skip(s, v, path, backend, strategy) {
            return Err(RunError::Skip(why));
        }
        found.ok_or_else(|| {
            RunError::Skip(format!(
                "{} has no run of {backend}/{strategy}",
                path.display()
            ))
        })
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
        match b.can_run(&var.model, var.dtype, &st.schedule_for(var)) {
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
        // The oracle computes a row-independent model's observed rows alone
        // (an encoder's observed sequences alone), whatever the strategy:
        // one run serves every strategy.
        let model = &s.variants[v].model;
        let row_independent = model.rows_independent() || model.encoder();
        let computed = if backend.is_oracle() && row_independent {
            "observed rows"
        } else {
            strategy
        };
        let key = Session::run_key(s, v, backend, computed);
        slot(&self.runs, key)
            .get_or_init(|| self.execute(s, v, backend, strategy, None))
            .clone()
    }

    /// Backend `backend`'s `strategy` run of variant `v` with every layer
    /// fed the observed rows of `by` — another run's checkpoints, named
    /// `by_name` in the memo — instead of its own (teacher forcing,
    /// [`layerdrift_backends::Diagnose::forced`]): each checkpoint is the
    /// error-free-input output of that layer.
    pub fn forced_run(
        &self,
        s: &Scenario,
        v: usize,
        (backend, strategy): (BackendId, &str),
        (by_name, by): (&str, &Checkpoints),
    ) -> Result<Arc<Run>, RunError> {
        let key = format!(
            "{}#forced-by#{by_name}",
            Session::run_key(s, v, backend, strategy)
        );
        slot(&self.runs, key)
            .get_or_init(|| self.execute(s, v, backend, strategy, Some(by)))
            .clone()
    }

    /// Variant `v`'s request for `strategy` — its model, the memoised
    /// weights and input, the schedule, the observed rows, the threads —
    /// handed to `f`: what a run of it computes, for [`Session::run`] and
    /// for code that calls a backend directly (the overhead bench).
    pub fn with_request<R>(
        &self,
        s: &Scenario,
        v: usize,
        strategy: &str,
        f: impl FnOnce(&RunRequest<'_>) -> R,
    ) -> Result<R, RunError> {
        let var = &s.variants[v];
        let st = s
            .strategy(strategy)
            .ok_or_else(|| RunError::Fail(format!("no strategy `{strategy}`")))?;
        let weights = self.weights(s, v).map_err(RunError::Fail)?;
        let input = self.input(s, v).map_err(RunError::Fail)?;
        let schedule = st.schedule_for(var);
        Ok(f(&RunRequest {
            model: &var.model,
            weights: &weights,
            input: &input,
            dtype: var.dtype,
            schedule: &schedule,
            observed: &var.observed,
            threads: s.threads,
            execution: var.execution,
            diagnose: Diagnose {
                ops: s.diagnose.ops.is_some(),
                forced: None,
            },
        }))
    }

    fn execute(
        &self,
        s: &Scenario,
        v: usize,
        backend: BackendId,
        strategy: &str,
        forced: Option<&Checkpoints>,
    ) -> Result<Arc<Run>, RunError> {
        let b = self
            .backend(backend)
            .ok_or_else(|| RunError::Skip(format!("no backend `{backend}` in this build")))?;
        self.with_request(s, v, strategy, |req| {
            // A forced run's op checkpoints are never compared: only its
            // layers are (the local error).
            let req = &RunRequest {
                diagnose: Diagnose {
                    forced,
                    ops: req.diagnose.ops && forced.is_none(),
                },
                ..*req
            };
            b.check(req).map_err(to_run_error)?;
            let _guard = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            let start = Instant::now();
            let checkpoints = b.run(req).map_err(to_run_error)?;
            let wall = start.elapsed();
            Ok(Arc::new(Run {
                checkpoints,
                wall,
                info: b.info(),
            }))
        })?
    }
}

fn to_run_error(e: BackendError) -> RunError {
    if e.is_skip() {
        RunError::Skip(e.to_string())
    } else {
        RunError::Fail(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two files describing one computation share its run; a file that
    /// changes a seed gets its own.
    #[test]
    fn runs_are_memoised_by_content_not_by_file() {
        let dir = std::env::temp_dir().join(format!("ld-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = |seed: u64| {
            format!(
                "model: {{ kind: residual_mlp, layers: 2, dim: 8, hidden: 16 }}\n\
                 weights: {{ init: {{ seed: {seed}, std: 0.2 }} }}\n\
                 input: {{ batch: 2, seq: 4, seed: 1 }}\n\
                 strategies: [full, rows]\n\
                 checks: [{{ oracle: full }}]\n"
            )
        };
        let session = Session::new();
        let load = |name: &str, seed: u64| {
            let f = dir.join(name);
            std::fs::write(&f, yaml(seed)).unwrap();
            session.load(&f).unwrap()
        };
        let (a, b, c) = (load("a.yaml", 3), load("b.yaml", 3), load("c.yaml", 4));
        let run = |s: &Scenario| session.run(s, 0, ORACLE, "full").unwrap();
        assert!(Arc::ptr_eq(&run(&a), &run(&b)), "one computation, one run");
        assert!(
            !Arc::ptr_eq(&run(&a), &run(&c)),
            "another seed, another run"
        );
        assert_ne!(run(&a).checkpoints, run(&c).checkpoints);
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! Keras' training callbacks: [`EarlyStopping`], [`ModelCheckpoint`] and
//! [`ReduceLROnPlateau`], each watching one [`Monitor`]ed figure of the epoch logs.
//!
//! A callback ends training cleanly through [`Callback::stop_training`]: `fit` finishes the
//! epoch's callbacks, returns its history with [`History::stopped_early`](crate::train::History::stopped_early) set, and no error.
//!
//! ```
//! use pare_tensor::callbacks::{EarlyStopping, ModelCheckpoint, Monitor};
//! use pare_tensor::optim::{AdamConfig, AdamW};
//! use pare_tensor::train::{Fit, FitConfig};
//! use pare_tensor::{gradcheck::toy_halves, models::small_cnn};
//!
//! let (x, y) = toy_halves(64, 0, 0.8, 0.2);
//! let mut model = small_cnn(0);
//! let mut opt = AdamW::new(AdamConfig::default(), 0.004)?;
//! let mut stop = EarlyStopping::new(Monitor::ValLoss).patience(2).restore_best_weights(true);
//! let path = std::env::temp_dir().join(format!("pare-doc-best-{}.safetensors", std::process::id()));
//! let mut best = ModelCheckpoint::new(&path, Monitor::ValAccuracy);
//! let cfg = FitConfig { epochs: 20, batch_size: 16, validation_split: 0.25, verbose: false,
//!     clip_global_norm: Some(1.0), ..Default::default() };
//! let history = Fit::new(cfg)
//!     .callback(&mut stop)
//!     .callback(&mut best)
//!     .run(&mut model, &mut opt, x.view(), &y)?;
//! assert!(history.epochs.len() <= 20);
//! assert!(path.exists());
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```

use crate::error::{Result, TensorError};
use crate::nn::{Param, Sequential};
use crate::train::{Callback, EpochLog};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A figure of the [`EpochLog`] a callback watches; losses improve downwards, accuracies
/// upwards (Keras' `mode="auto"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Monitor {
    /// Training loss (`loss`).
    Loss,
    /// Training accuracy (`accuracy`).
    Accuracy,
    /// Validation loss (`val_loss`), Keras' default.
    ValLoss,
    /// Validation accuracy (`val_accuracy`).
    ValAccuracy,
}

impl Monitor {
    /// Keras' name of the figure.
    pub fn name(self) -> &'static str {
        match self {
            Monitor::Loss => "loss",
            Monitor::Accuracy => "accuracy",
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
        }
    }

    /// The figure in `log`.
    ///
    /// # Errors
    /// A validation figure when the run has no validation data.
    pub fn value(self, log: &EpochLog) -> Result<f32> {
        let v = match self {
            Monitor::Loss => Some(log.loss),
            Monitor::Accuracy => Some(log.accuracy),
            Monitor::ValLoss => log.val_loss,
            Monitor::ValAccuracy => log.val_accuracy,
        };
        v.ok_or(TensorError::BadHyperParameter {
            name: "monitor",
            value: self.name().to_string(),
            reason: "needs validation data (FitConfig::validation_split or \
                     Fit::validation_data)",
        })
    }

    /// Whether a smaller value is better.
    pub fn lower_is_better(self) -> bool {
        matches!(self, Monitor::Loss | Monitor::ValLoss)
    }

    /// Whether `current` beats `best` by more than `min_delta` (Keras' `monitor_op(current -
    /// min_delta, best)`, the delta's sign following the mode). A NaN never improves.
    pub fn improves(self, current: f32, best: Option<f32>, min_delta: f32) -> bool {
        let Some(best) = best else {
            return !current.is_nan();
        };
        if self.lower_is_better() {
            current + min_delta < best
        } else {
            current - min_delta > best
        }
    }
}

fn check_delta(min_delta: f32) -> Result<()> {
    if min_delta.is_finite() && min_delta >= 0.0 {
        Ok(())
    } else {
        Err(TensorError::BadHyperParameter {
            name: "min_delta",
            value: min_delta.to_string(),
            reason: "must be >= 0",
        })
    }
}

fn snapshot(model: &Sequential) -> Vec<Param> {
    model.params().into_iter().cloned().collect()
}

/// Keras' `EarlyStopping`: stops when the monitored figure has not improved by more than
/// `min_delta` for `patience` epochs in a row; with `restore_best_weights`, the model gets the
/// weights of its best epoch back when it stops (as Keras does: a run that reaches its last
/// epoch keeps its last weights).
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    monitor: Monitor,
    patience: usize,
    min_delta: f32,
    restore_best_weights: bool,
    best: Option<f32>,
    best_epoch: Option<usize>,
    best_weights: Option<Vec<Param>>,
    wait: usize,
    stopped_epoch: Option<usize>,
}

impl EarlyStopping {
    /// Keras' defaults: patience 0, min_delta 0, no restoring.
    pub fn new(monitor: Monitor) -> EarlyStopping {
        EarlyStopping {
            monitor,
            patience: 0,
            min_delta: 0.0,
            restore_best_weights: false,
            best: None,
            best_epoch: None,
            best_weights: None,
            wait: 0,
            stopped_epoch: None,
        }
    }
    /// Epochs without improvement to allow before stopping (default 0).
    pub fn patience(mut self, epochs: usize) -> Self {
        self.patience = epochs;
        self
    }
    /// The smallest change that counts as an improvement (default 0; a negative or
    /// non-finite value is reported by `fit` at the first epoch's end).
    pub fn min_delta(mut self, delta: f32) -> Self {
        self.min_delta = delta;
        self
    }
    /// Put the best epoch's weights back on stopping (default false).
    pub fn restore_best_weights(mut self, restore: bool) -> Self {
        self.restore_best_weights = restore;
        self
    }
    /// The epoch (1-based, as [`EpochLog::epoch`]) training stopped after, if it did.
    pub fn stopped_epoch(&self) -> Option<usize> {
        self.stopped_epoch
    }
    /// The best epoch so far (1-based) and its figure.
    pub fn best(&self) -> Option<(usize, f32)> {
        self.best_epoch.zip(self.best)
    }
}

impl Callback for EarlyStopping {
    fn on_train_begin(&mut self, _: &mut Sequential) -> Result<()> {
        check_delta(self.min_delta)?;
        self.best = None;
        self.best_epoch = None;
        self.best_weights = None;
        self.wait = 0;
        self.stopped_epoch = None;
        Ok(())
    }
    fn on_epoch_end(&mut self, log: &EpochLog, model: &mut Sequential) -> Result<()> {
        let current = self.monitor.value(log)?;
        self.wait += 1;
        if self.monitor.improves(current, self.best, self.min_delta) {
            self.best = Some(current);
            self.best_epoch = Some(log.epoch);
            if self.restore_best_weights {
                self.best_weights = Some(snapshot(model));
            }
            self.wait = 0;
            return Ok(());
        }
        if self.wait >= self.patience {
            self.stopped_epoch = Some(log.epoch);
            if let Some(best) = &self.best_weights {
                for (p, b) in model.params_mut().into_iter().zip(best) {
                    p.value.assign(&b.value);
                }
            }
        }
        Ok(())
    }
    fn stop_training(&self) -> bool {
        self.stopped_epoch.is_some()
    }
}

/// Keras' `ModelCheckpoint`: saves the model (a [`crate::checkpoint`] file, written to a
/// temporary file and renamed, so a crash never leaves half a file) after each epoch whose
/// monitored figure is the best so far. Unlike Keras, `save_best_only` defaults to true.
///
/// `{epoch}` in the path is replaced by the epoch (1-based), so every saved epoch can have its
/// own file.
#[derive(Debug, Clone)]
pub struct ModelCheckpoint {
    path: PathBuf,
    monitor: Monitor,
    save_best_only: bool,
    min_delta: f32,
    best: Option<f32>,
    saved: Vec<(usize, PathBuf)>,
}

impl ModelCheckpoint {
    /// Saves to `path` when `monitor` improves.
    pub fn new(path: impl AsRef<Path>, monitor: Monitor) -> ModelCheckpoint {
        ModelCheckpoint {
            path: path.as_ref().to_path_buf(),
            monitor,
            save_best_only: true,
            min_delta: 0.0,
            best: None,
            saved: Vec::new(),
        }
    }
    /// Save after every epoch instead of only the best ones (default: best only).
    pub fn save_best_only(mut self, best_only: bool) -> Self {
        self.save_best_only = best_only;
        self
    }
    /// The epochs saved (1-based) and the file each went to, in order.
    pub fn saved(&self) -> &[(usize, PathBuf)] {
        &self.saved
    }
    /// The best figure seen.
    pub fn best(&self) -> Option<f32> {
        self.best
    }
}

impl Callback for ModelCheckpoint {
    fn on_train_begin(&mut self, _: &mut Sequential) -> Result<()> {
        self.best = None;
        self.saved.clear();
        Ok(())
    }
    fn on_epoch_end(&mut self, log: &EpochLog, model: &mut Sequential) -> Result<()> {
        let current = self.monitor.value(log)?;
        let improved = self.monitor.improves(current, self.best, self.min_delta);
        if improved {
            self.best = Some(current);
        }
        if improved || !self.save_best_only {
            let path = PathBuf::from(
                self.path
                    .to_string_lossy()
                    .replace("{epoch}", &log.epoch.to_string()),
            );
            let meta = HashMap::from([
                ("epoch".to_string(), log.epoch.to_string()),
                (self.monitor.name().to_string(), current.to_string()),
            ]);
            crate::checkpoint::save(model, &path, meta)?;
            self.saved.push((log.epoch, path));
        }
        Ok(())
    }
}

/// Keras' `ReduceLROnPlateau`: multiplies the optimizer's learning rate by `factor` when the
/// monitored figure has not improved by more than `min_delta` for `patience` epochs, then
/// waits `cooldown` epochs before watching again, never going below `min_lr`. Defaults are
/// Keras': factor 0.1, patience 10, min_delta 1e-4, cooldown 0, min_lr 0.
#[derive(Debug, Clone)]
pub struct ReduceLROnPlateau {
    monitor: Monitor,
    factor: f32,
    patience: usize,
    min_delta: f32,
    cooldown: usize,
    min_lr: f32,
    best: Option<f32>,
    wait: usize,
    cooldown_left: usize,
    reductions: Vec<(usize, f32)>,
}

impl ReduceLROnPlateau {
    /// Keras' defaults on `monitor`.
    pub fn new(monitor: Monitor) -> ReduceLROnPlateau {
        ReduceLROnPlateau {
            monitor,
            factor: 0.1,
            patience: 10,
            min_delta: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
            best: None,
            wait: 0,
            cooldown_left: 0,
            reductions: Vec::new(),
        }
    }
    /// Multiplier of the rate, in (0, 1) (default 0.1).
    pub fn factor(mut self, f: f32) -> Self {
        self.factor = f;
        self
    }
    /// Epochs without improvement before a reduction (default 10).
    pub fn patience(mut self, epochs: usize) -> Self {
        self.patience = epochs;
        self
    }
    /// The smallest change that counts as an improvement (default 1e-4).
    pub fn min_delta(mut self, delta: f32) -> Self {
        self.min_delta = delta;
        self
    }
    /// Epochs to wait after a reduction before counting again (default 0).
    pub fn cooldown(mut self, epochs: usize) -> Self {
        self.cooldown = epochs;
        self
    }
    /// Floor of the rate (default 0).
    pub fn min_lr(mut self, lr: f32) -> Self {
        self.min_lr = lr;
        self
    }
    /// Each reduction: the epoch (1-based) after which it happened and the new rate.
    pub fn reductions(&self) -> &[(usize, f32)] {
        &self.reductions
    }
}

impl Callback for ReduceLROnPlateau {
    fn on_train_begin(&mut self, _: &mut Sequential) -> Result<()> {
        check_delta(self.min_delta)?;
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(TensorError::BadHyperParameter {
                name: "factor",
                value: self.factor.to_string(),
                reason: "must be in (0, 1)",
            });
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return Err(TensorError::BadHyperParameter {
                name: "min_lr",
                value: self.min_lr.to_string(),
                reason: "must be >= 0",
            });
        }
        self.best = None;
        self.wait = 0;
        self.cooldown_left = 0;
        self.reductions.clear();
        Ok(())
    }
    fn adjust_learning_rate(&mut self, log: &EpochLog, learning_rate: f32) -> Result<Option<f32>> {
        let current = self.monitor.value(log)?;
        let in_cooldown = self.cooldown_left > 0;
        if in_cooldown {
            self.cooldown_left -= 1;
            self.wait = 0;
        }
        if self.monitor.improves(current, self.best, self.min_delta) {
            self.best = Some(current);
            self.wait = 0;
        } else if !in_cooldown {
            self.wait += 1;
            if self.wait >= self.patience && learning_rate > self.min_lr {
                let new = (learning_rate * self.factor).max(self.min_lr);
                self.cooldown_left = self.cooldown;
                self.wait = 0;
                self.reductions.push((log.epoch, new));
                return Ok(Some(new));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::small_cnn;
    use crate::optim::{Adam, AdamConfig, Optimizer};
    use crate::train::{Fit, FitConfig};

    fn log(epoch: usize, val_loss: f32) -> EpochLog {
        EpochLog {
            epoch,
            loss: val_loss,
            accuracy: 0.5,
            val_loss: Some(val_loss),
            val_accuracy: Some(1.0 - val_loss),
            seconds: 0.0,
            examples_per_second: 0.0,
            metrics: Vec::new(),
        }
    }

    #[test]
    fn early_stopping_stops_at_the_right_epoch_and_restores_the_best() {
        // val_loss 1.0, 0.8, 0.85, 0.9, 0.7 with patience 2: best at epoch 2, epochs 3 and 4
        // do not improve, so training stops after epoch 4 with epoch 2's weights.
        let mut model = small_cnn(0);
        let mut es = EarlyStopping::new(Monitor::ValLoss)
            .patience(2)
            .restore_best_weights(true);
        es.on_train_begin(&mut model).unwrap();
        let mut at_best = None;
        for (i, v) in [1.0, 0.8, 0.85, 0.9, 0.7].into_iter().enumerate() {
            let epoch = i + 1;
            // Each epoch "trains": the weights change.
            for p in model.params_mut() {
                p.value.mapv_inplace(|w| w + 0.5);
            }
            if epoch == 2 {
                at_best = Some(snapshot(&model));
            }
            es.on_epoch_end(&log(epoch, v), &mut model).unwrap();
            if es.stop_training() {
                break;
            }
        }
        assert_eq!(es.stopped_epoch(), Some(4));
        assert_eq!(es.best(), Some((2, 0.8)));
        let restored: Vec<Param> = snapshot(&model);
        assert_eq!(Some(restored), at_best);

        // min_delta: 0.8 → 0.79 is no improvement at min_delta 0.05, so patience 0 stops at 2.
        let mut es = EarlyStopping::new(Monitor::ValLoss).min_delta(0.05);
        es.on_train_begin(&mut model).unwrap();
        es.on_epoch_end(&log(1, 0.8), &mut model).unwrap();
        assert!(!es.stop_training());
        es.on_epoch_end(&log(2, 0.79), &mut model).unwrap();
        assert_eq!(es.stopped_epoch(), Some(2));
        // Accuracy improves upwards.
        assert!(Monitor::ValAccuracy.improves(0.9, Some(0.8), 0.0));
        assert!(!Monitor::ValAccuracy.improves(0.7, Some(0.8), 0.0));
        assert!(!Monitor::Loss.improves(f32::NAN, None, 0.0));
    }

    #[test]
    fn a_stop_ends_fit_cleanly_with_the_history_so_far() {
        let (x, y) = crate::gradcheck::toy_halves(32, 1, 0.8, 0.2);
        let mut model = small_cnn(0);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        // patience 0 on the training accuracy, which cannot improve by more than 1: a stop.
        let mut es = EarlyStopping::new(Monitor::Accuracy).min_delta(1.0);
        let cfg = FitConfig {
            epochs: 10,
            batch_size: 16,
            verbose: false,
            ..Default::default()
        };
        let h = Fit::new(cfg)
            .callback(&mut es)
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        assert_eq!(h.epochs.len(), 2);
        assert_eq!(h.stopped_early, Some(2));
        assert_eq!(es.stopped_epoch(), Some(2));
        assert_eq!(h.epochs[0].epoch, 1);
        assert_eq!(adam.iterations(), 4);
        // A validation monitor without validation data is an error naming it.
        let mut es = EarlyStopping::new(Monitor::ValLoss);
        let err = Fit::new(FitConfig {
            verbose: false,
            ..Default::default()
        })
        .callback(&mut es)
        .run(&mut model, &mut adam, x.view(), &y)
        .unwrap_err();
        assert!(err.to_string().starts_with("monitor = val_loss"), "{err}");
    }

    #[test]
    fn model_checkpoint_saves_the_best_epochs_atomically() {
        let dir = std::env::temp_dir().join(format!("pare-ckpt-cb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut model = small_cnn(0);
        let mut cb =
            ModelCheckpoint::new(dir.join("best-{epoch}.safetensors"), Monitor::ValAccuracy);
        cb.on_train_begin(&mut model).unwrap();
        // val_accuracy = 1 − v: 0.2, 0.5, 0.4, 0.6 → epochs 1, 2 and 4 saved.
        for (i, v) in [0.8, 0.5, 0.6, 0.4].into_iter().enumerate() {
            for p in model.params_mut() {
                p.value.fill(i as f32);
            }
            cb.on_epoch_end(&log(i + 1, v), &mut model).unwrap();
        }
        let epochs: Vec<usize> = cb.saved().iter().map(|s| s.0).collect();
        assert_eq!(epochs, [1, 2, 4]);
        let last = &cb.saved()[2].1;
        assert_eq!(last, &dir.join("best-4.safetensors"));
        let mut loaded = small_cnn(1);
        crate::checkpoint::load(&mut loaded, last).unwrap();
        assert!(
            loaded
                .params()
                .iter()
                .all(|p| p.value.iter().all(|&w| w == 3.0))
        );
        // Nothing but the checkpoints is left in the directory (no temporary files).
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reduce_lr_on_plateau_follows_keras() {
        // patience 1, factor 0.5, cooldown 1, min_lr 0.3 from lr 1: val_loss 1, 1, 1, 1, 1, 1.
        // Epoch 2: no improvement, wait 1 ≥ 1 → 0.5, cooldown 1. Epoch 3: cooldown. Epoch 4:
        // wait 1 → max(0.25, 0.3) = 0.3. Epoch 5: cooldown; epoch 6: lr is at the floor.
        let mut model = small_cnn(0);
        let mut cb = ReduceLROnPlateau::new(Monitor::ValLoss)
            .patience(1)
            .factor(0.5)
            .cooldown(1)
            .min_lr(0.3);
        cb.on_train_begin(&mut model).unwrap();
        let mut lr = 1.0;
        for epoch in 1..=6 {
            if let Some(new) = cb.adjust_learning_rate(&log(epoch, 1.0), lr).unwrap() {
                lr = new;
            }
        }
        assert_eq!(cb.reductions(), [(2, 0.5), (4, 0.3)]);

        // Inside fit, the optimizer's rate changes.
        let (x, y) = crate::gradcheck::toy_halves(32, 1, 0.8, 0.2);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        let mut cb = ReduceLROnPlateau::new(Monitor::Accuracy)
            .patience(1)
            .min_delta(1.0)
            .factor(0.5);
        let cfg = FitConfig {
            epochs: 3,
            batch_size: 16,
            verbose: false,
            ..Default::default()
        };
        Fit::new(cfg)
            .callback(&mut cb)
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        // Accuracy can never improve by more than 1 after the first epoch: halved after 2 and 3.
        assert_eq!(cb.reductions().len(), 2);
        assert_eq!(adam.learning_rate(), Some(1e-3 * 0.25));
        let mut bad = ReduceLROnPlateau::new(Monitor::Loss).factor(1.0);
        assert!(bad.on_train_begin(&mut model).is_err());
    }
}

//! Image samples measured by an independent evaluator (`models.evaluator`, a CNN trained on clean labelled
//! images): `E[1/p_eval(c|Y)]` (the quantity CFG lowers, docs/theory.md), the accuracy toward the class, and the
//! Fréchet distance of evaluator features to real images of the class beside its noise floor (real against real at
//! the same sample size), so a distance at its floor is read as such.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::Serialize;
use std::path::Path;
use tilt_core::metrics::{self, MeanSe};
use tilt_core::tensor_ext;
use tilt_models::Evaluator;

/// Most real images read as the reference (the Fréchet statistics converge long before).
const MAX_REFERENCE: usize = 5000;

/// What the evaluator says about one strength's samples.
#[derive(Clone, Debug, Serialize)]
pub struct EvaluatorStats {
    /// `E[1/p_eval(c|Y)]` over the samples, with its standard error (heavy-tailed: read it beside the accuracy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inv_class_prob: Option<MeanSe>,
    /// Fraction of samples the evaluator classifies as the class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Fréchet distance of evaluator features to the reference images.
    pub frechet: f64,
    /// The same distance between two disjoint sets of real images at the samples' size: the noise floor.
    pub frechet_floor: f64,
    /// Real images in the reference both are measured against (of the class, when a class is guided toward).
    pub reference_images: usize,
    /// Real images in the floor's comparison (below the sample count when the class has too few images).
    pub floor_images: usize,
}

/// A loaded evaluator with the features of its reference images.
pub struct Evaluation {
    evaluator: Evaluator,
    class: Option<usize>,
    dim: usize,
    reference: Vec<f32>,
    feature_dim: usize,
}

/// `f` over `[n, d]` rows in batches of 500.
fn batched(x: &[f32], d: usize, f: impl Fn(Tensor<2>) -> Tensor<2>, device: &Device) -> Vec<f32> {
    tensor_ext::map_rows(x, d, 500, f, device)
}

impl Evaluation {
    /// Loads the evaluator run at `path` and the features of real images of `class` (all classes when `None`)
    /// from the data it was trained on; refuses an evaluator of another image shape or class count.
    pub fn load(
        path: &Path,
        image: [usize; 3],
        class: Option<usize>,
        class_names: Option<&[String]>,
        device: &Device,
    ) -> Result<Self> {
        let (evaluator, state) = tilt_train::load_evaluator(path, device)
            .with_context(|| format!("models.evaluator = {}", path.display()))?;
        let dim = image.iter().product::<usize>();
        if state.image != Some(image) {
            bail!(
                "models.evaluator = {}: trained on images of {:?}, but the samples are {image:?} [channels, height, width]",
                path.display(),
                state.image
            );
        }
        if let Some(c) = class
            && c >= state.num_classes
        {
            bail!("class: {c} is not a class of models.evaluator ({} classes)", state.num_classes);
        }
        if let (Some(a), Some(b)) = (class_names, state.class_names.as_deref())
            && a != b
        {
            bail!(
                "models.evaluator = {}: its classes {b:?} are not models.base's {a:?}; train both on the same folder",
                path.display()
            );
        }
        let data = state.config.data.generate(state.config.data_size, state.config.seed).with_context(|| {
            format!("models.evaluator = {}: its training data (the reference images)", path.display())
        })?;
        let labels = data.labels.clone().unwrap_or_default();
        let mut idx: Vec<usize> =
            (0..data.len()).filter(|&i| class.is_none_or(|c| labels.get(i) == Some(&c))).collect();
        idx.truncate(MAX_REFERENCE);
        if idx.len() < 4 {
            bail!(
                "models.evaluator: only {} reference images of the class in its data; at least 4 are needed",
                idx.len()
            );
        }
        let rows = data.clean_rows(&idx)?;
        let reference = batched(&rows, dim, |x| evaluator.features(x), device);
        let feature_dim = reference.len() / idx.len();
        Ok(Self { evaluator, class, dim, reference, feature_dim })
    }

    /// The measures of `n` samples `x` (rows in [-1, 1]).
    pub fn measure(&self, x: &[f32], device: &Device) -> EvaluatorStats {
        let (d, f) = (self.dim, self.feature_dim);
        let n = x.len() / d;
        let (inv_class_prob, accuracy) = match self.class {
            Some(c) => {
                let logp = batched(x, d, |x| log_softmax(self.evaluator.forward(x), 1), device);
                let k = logp.len() / n;
                let inv: Vec<f64> = (0..n).map(|i| (-(logp[i * k + c] as f64)).exp()).collect();
                let hits = (0..n)
                    .filter(|&i| {
                        let row = &logp[i * k..(i + 1) * k];
                        row.iter().enumerate().all(|(j, v)| j == c || *v < row[c])
                    })
                    .count();
                (Some(metrics::mean_se(&inv)), Some(hits as f64 / n as f64))
            }
            None => (None, None),
        };
        // Samples and a held-back set of real images against the same real reference: the second is the floor.
        let features = batched(x, d, |x| self.evaluator.features(x), device);
        let m = self.reference.len() / f;
        let floor_images = n.min(m / 2).max(2);
        let (held, reference) = self.reference.split_at(floor_images * f);
        let frechet = tilt_core::frechet::frechet_distance(&features, reference, f);
        let frechet_floor = tilt_core::frechet::frechet_distance(held, reference, f);
        EvaluatorStats {
            inv_class_prob,
            accuracy,
            frechet,
            frechet_floor,
            reference_images: m - floor_images,
            floor_images,
        }
    }
}

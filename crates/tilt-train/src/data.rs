//! Training data: 2-D toy sets, Gaussian mixtures (any dimension), CSV and IDX files, and folders of images
//! (decoded on demand, [`crate::image_folder`]); seeded, split and optionally standardised (the statistics are saved
//! with the model).

use anyhow::{Context, Result, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use std::path::PathBuf;
use std::sync::Arc;
use tilt_core::MixtureSpec;

/// Where the training points come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataSpec {
    /// A Gaussian mixture; labels are the classes of the components.
    Mixture {
        /// The mixture (its fields sit directly in `[data]`).
        #[serde(flatten)]
        mixture: MixtureSpec,
    },
    /// The 2-D Swiss roll `(t cos t, t sin t) / 4`, `t ~ U(1.5 pi, 4.5 pi)`, plus noise; unlabelled.
    SwissRoll {
        /// Standard deviation of the Gaussian noise added to each point.
        #[serde(default = "d_noise")]
        noise: f64,
    },
    /// Two interleaved half circles, labelled 0 and 1.
    TwoMoons {
        /// Standard deviation of the Gaussian noise added to each point.
        #[serde(default = "d_noise")]
        noise: f64,
    },
    /// Uniform on the dark squares of a 4 x 4 board on `[-2, 2]^2`; unlabelled.
    Checkerboard,
    /// Concentric rings of radius 1, 2, ..., labelled by ring.
    Rings {
        /// Number of rings.
        #[serde(default = "d_rings")]
        rings: usize,
        /// Standard deviation of the radial noise.
        #[serde(default = "d_noise")]
        noise: f64,
    },
    /// Rows `x1,...,xd[,label]` of a CSV file (a header line is allowed).
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// Whether the last column is an integer class label.
        #[serde(default)]
        labelled: bool,
        /// The number of classes, when some have no rows in the file; labels must be below it. Without it the
        /// labels must be exactly 0, 1, ..., K-1, each present (a stray label is an error, not a new class).
        classes: Option<usize>,
    },
    /// Images of IDX files (MNIST, Fashion-MNIST; gzipped or raw), flattened to rows of `rows * cols` pixels
    /// scaled from 0..255 to [-1, 1]; labelled by `labels` when given.
    Idx {
        /// The IDX image file.
        images: PathBuf,
        /// The IDX label file, one label per image.
        labels: Option<PathBuf>,
        /// Use only the first `limit` images.
        limit: Option<usize>,
    },
    /// A folder of PNG and JPEG images, one sub-folder per class (sorted names; the label map is saved with the
    /// run), or images directly in it for unlabelled data. Each image is resized (shorter side to `size`),
    /// centre-cropped to `size x size` and scaled to [-1, 1]; images are decoded when a batch is drawn, so memory
    /// does not grow with the number of images.
    ImageFolder {
        /// The folder.
        path: PathBuf,
        /// Side of the square training images.
        size: usize,
        /// 1 (grey) or 3 (RGB).
        #[serde(default = "d_channels")]
        channels: usize,
        /// Mirror each training image left-right with probability 1/2 (drawn from the step's own random stream,
        /// so a resumed run is byte-identical).
        #[serde(default)]
        flip: bool,
        /// Leave out files that do not decode (counted on stderr) instead of refusing the folder.
        #[serde(default)]
        skip_bad: bool,
    },
    /// Latent diffusion: the codes of an autoencoder run (`objective.kind = "autoencoder"`) for the images it was
    /// trained on, with their labels. `tilt sample` decodes what a network trained on them draws when given the
    /// same autoencoder as `models.autoencoder`.
    Latent {
        /// The autoencoder run.
        autoencoder: PathBuf,
    },
}

fn d_noise() -> f64 {
    0.05
}
fn d_rings() -> usize {
    3
}
fn d_channels() -> usize {
    3
}

/// Rows that live in image files and are decoded when drawn.
#[derive(Clone, Debug)]
pub struct Streamed {
    /// The scanned folder.
    pub folder: Arc<crate::image_folder::ImageFolder>,
    /// Row `i` is file `index[i]` of the folder.
    pub index: Vec<usize>,
    /// Mirror rows left-right at random when drawn.
    pub flip: bool,
}

impl PartialEq for Streamed {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.folder, &other.folder) && self.index == other.index && self.flip == other.flip
    }
}

/// Points `[n, d]` row-major, with optional class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Row-major values, `[len, dim]`.
    pub x: Vec<f32>,
    /// Class labels, one per row.
    pub labels: Option<Vec<usize>>,
    /// Values per row.
    pub dim: usize,
    /// Number of classes (0: unlabelled).
    pub num_classes: usize,
    /// `[channels, height, width]` when the rows are flattened images (`dim` is their product).
    pub image: Option<[usize; 3]>,
    /// Rows decoded from files when drawn (then `x` is empty): an image folder.
    pub streamed: Option<Streamed>,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match &self.streamed {
            Some(s) => s.index.len(),
            None => self.x.len() / self.dim,
        }
    }
    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` of an in-memory data set (panics for streamed rows: use [`Dataset::rows`]).
    pub fn row(&self, i: usize) -> &[f32] {
        assert!(self.streamed.is_none(), "streamed rows are drawn with Dataset::rows");
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows `idx`, in order, flattened: copied, or decoded from their files (where `rng` draws the random
    /// flips of an image folder with `flip = true`; it is not touched otherwise).
    pub fn rows(&self, idx: &[usize], rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
        match &self.streamed {
            Some(s) => {
                let files: Vec<usize> = idx.iter().map(|&i| s.index[i]).collect();
                s.folder.rows(&files, s.flip.then_some(rng))
            }
            None => Ok(idx.iter().flat_map(|&i| self.row(i).iter().copied()).collect()),
        }
    }

    /// For a streamed data set, starts decoding the batch that a step drawing `batch` uniform indices (then its flips)
    /// from `rng` will ask for; a no-op for rows in memory. A wrong guess costs only the background decoding.
    pub fn prefetch(&self, batch: usize, mut rng: ChaCha8Rng) {
        let Some(s) = &self.streamed else { return };
        let idx = crate::objectives::batches::uniform_indices(self.len(), batch, &mut rng);
        let mirrored: Vec<bool> =
            if s.flip { idx.iter().map(|_| rng.random::<bool>()).collect() } else { vec![false; idx.len()] };
        s.folder.prefetch(idx.iter().map(|&i| s.index[i]).collect(), mirrored);
    }

    /// The rows `idx` as they are (never flipped), flattened.
    pub fn clean_rows(&self, idx: &[usize]) -> Result<Vec<f32>> {
        match &self.streamed {
            Some(s) => s.folder.rows(&idx.iter().map(|&i| s.index[i]).collect::<Vec<_>>(), None),
            None => Ok(idx.iter().flat_map(|&i| self.row(i).iter().copied()).collect()),
        }
    }

    /// The rows `idx`, in order.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let streamed =
            self.streamed.as_ref().map(|s| Streamed { index: idx.iter().map(|&i| s.index[i]).collect(), ..s.clone() });
        Dataset {
            x: if streamed.is_some() {
                Vec::new()
            } else {
                idx.iter().flat_map(|&i| self.row(i).iter().copied()).collect()
            },
            labels: self.labels.as_ref().map(|l| idx.iter().map(|&i| l[i]).collect()),
            dim: self.dim,
            num_classes: self.num_classes,
            image: self.image,
            streamed,
        }
    }

    /// The class names of an image folder (its sub-folders), in label order.
    pub fn class_names(&self) -> Option<Vec<String>> {
        self.streamed.as_ref().map(|s| s.folder.class_names.clone()).filter(|n| !n.is_empty())
    }

    /// SHA-256 of the rows and labels (hex): what `--resume` compares to refuse changed data. For an image folder,
    /// of the decoding settings and every file's name and bytes.
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        if let Some(s) = &self.streamed {
            return s.folder.sha256.clone();
        }
        let mut h = Sha256::new();
        h.update((self.dim as u64).to_le_bytes());
        for v in &self.x {
            h.update(v.to_le_bytes());
        }
        if let Some(l) = &self.labels {
            h.update((self.num_classes as u64).to_le_bytes());
            for c in l {
                h.update((*c as u64).to_le_bytes());
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first row with a coordinate beyond `limit` in magnitude: `(row index, value)`.
    pub fn first_beyond(&self, limit: f64) -> Option<(usize, f32)> {
        let i = self.x.iter().position(|v| (*v as f64).abs() > limit)?;
        Some((i / self.dim, self.x[i]))
    }

    /// A seeded shuffle split into `(train, test)` with `test_fraction` of the rows in the test part.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let n_test = ((self.len() as f64) * test_fraction).round() as usize;
        let mut test = self.subset(&idx[..n_test]);
        // The held-out loss is measured on the images as they are.
        if let Some(s) = &mut test.streamed {
            s.flip = false;
        }
        (self.subset(&idx[n_test..]), test)
    }
}

/// Per-coordinate affine standardisation `z = (x - mean) / std`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Per-coordinate mean subtracted.
    pub mean: Vec<f64>,
    /// Per-coordinate standard deviation divided by.
    pub std: Vec<f64>,
}

impl Standardizer {
    /// No standardisation.
    pub fn identity(dim: usize) -> Self {
        Self { mean: vec![0.0; dim], std: vec![1.0; dim] }
    }
    /// The standardisation of `data`'s columns.
    pub fn fit(data: &Dataset) -> Self {
        let d = data.dim;
        let n = data.len() as f64;
        let mean = tilt_core::metrics::column_means(&data.x, d);
        let mut var = vec![0.0; d];
        for row in data.x.chunks_exact(d) {
            for j in 0..d {
                var[j] += (row[j] as f64 - mean[j]).powi(2) / n;
            }
        }
        Self { mean, std: var.iter().map(|v| v.sqrt().max(1e-8)).collect() }
    }
    /// Standardise rows in place.
    pub fn apply(&self, x: &mut [f32]) {
        let d = self.mean.len();
        for row in x.chunks_exact_mut(d) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = ((*v as f64 - m) / s) as f32;
            }
        }
    }
    /// Undo [`Standardizer::apply`] in place.
    pub fn invert(&self, x: &mut [f32]) {
        let d = self.mean.len();
        for row in x.chunks_exact_mut(d) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v as f64 * s + m) as f32;
            }
        }
    }
}

/// The most classes a data set may declare (a class-embedding row each).
pub const MAX_CLASSES: usize = 100_000;

impl DataSpec {
    /// Check what can be checked without reading files; errors name the `data.` field.
    pub fn validate(&self) -> Result<()> {
        match self {
            DataSpec::Mixture { mixture } => mixture.build().map(|_| ()).map_err(|e| anyhow::anyhow!("data.{e}")),
            DataSpec::Rings { rings, .. } if !(1..=MAX_CLASSES).contains(rings) => {
                bail!("data.rings: expected 1 to {MAX_CLASSES} rings (one class each), got {rings}")
            }
            DataSpec::Idx { limit: Some(0), .. } => bail!("data.limit: expected at least 1 image"),
            DataSpec::ImageFolder { size, .. } if !(1..=crate::image_folder::MAX_SIZE).contains(size) => {
                bail!("data.size: expected an image side of 1 to {} pixels, got {size}", crate::image_folder::MAX_SIZE)
            }
            DataSpec::ImageFolder { channels, .. } if ![1, 3].contains(channels) => {
                bail!("data.channels: expected 1 (grey) or 3 (RGB), got {channels}")
            }
            DataSpec::Csv { classes: Some(c), .. } if !(1..=MAX_CLASSES).contains(c) => {
                bail!("data.classes: expected 1 to {MAX_CLASSES} classes, got {c}")
            }
            DataSpec::SwissRoll { noise } | DataSpec::TwoMoons { noise } | DataSpec::Rings { noise, .. }
                if !(noise.is_finite() && *noise >= 0.0 && *noise <= 1e3) =>
            {
                bail!("data.noise: expected a value in [0, 1000], got {noise}")
            }
            _ => Ok(()),
        }
    }

    /// `n` points (ignored for CSV, which gives its own rows), drawn with `seed`.
    pub fn generate(&self, n: usize, seed: u64) -> Result<Dataset> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = |rng: &mut ChaCha8Rng| -> f64 { StandardNormal.sample(rng) };
        let two_d = |pts: Vec<[f64; 2]>, labels: Option<Vec<usize>>, classes: usize| Dataset {
            x: pts.iter().flat_map(|p| [p[0] as f32, p[1] as f32]).collect(),
            labels,
            dim: 2,
            num_classes: classes,
            image: None,
            streamed: None,
        };
        Ok(match self {
            DataSpec::Mixture { mixture } => {
                let m = mixture.build().map_err(|e| anyhow::anyhow!("data.{e}"))?;
                let (x, comps) = m.sample(n, &mut rng);
                let owner = m.component_class();
                let labels =
                    owner.iter().all(Option::is_some).then(|| comps.iter().map(|&k| owner[k].unwrap()).collect());
                Dataset { x, labels, dim: m.dim(), num_classes: m.n_classes(), image: None, streamed: None }
            }
            DataSpec::SwissRoll { noise } => {
                let pts = (0..n)
                    .map(|_| {
                        let t = 1.5 * PI * (1.0 + 2.0 * rng.random::<f64>());
                        [t * t.cos() / 4.0 + noise * normal(&mut rng), t * t.sin() / 4.0 + noise * normal(&mut rng)]
                    })
                    .collect();
                two_d(pts, None, 0)
            }
            DataSpec::TwoMoons { noise } => {
                let mut labels = Vec::with_capacity(n);
                let pts = (0..n)
                    .map(|i| {
                        let (c, a) = (i % 2, PI * rng.random::<f64>());
                        labels.push(c);
                        let (x, y) = if c == 0 { (a.cos(), a.sin()) } else { (1.0 - a.cos(), 0.5 - a.sin()) };
                        [x + noise * normal(&mut rng), y + noise * normal(&mut rng)]
                    })
                    .collect();
                two_d(pts, Some(labels), 2)
            }
            DataSpec::Checkerboard => {
                let pts = (0..n)
                    .map(|_| {
                        loop {
                            let (x, y) = (4.0 * rng.random::<f64>() - 2.0, 4.0 * rng.random::<f64>() - 2.0);
                            if ((x + 2.0).floor() as i64 + (y + 2.0).floor() as i64) % 2 == 0 {
                                break [x, y];
                            }
                        }
                    })
                    .collect();
                two_d(pts, None, 0)
            }
            DataSpec::Rings { rings, noise } => {
                let mut labels = Vec::with_capacity(n);
                let pts = (0..n)
                    .map(|i| {
                        let r = i % rings;
                        labels.push(r);
                        let a = 2.0 * PI * rng.random::<f64>();
                        let rad = (r + 1) as f64 + noise * normal(&mut rng);
                        [rad * a.cos(), rad * a.sin()]
                    })
                    .collect();
                two_d(pts, Some(labels), *rings)
            }
            DataSpec::Csv { path, labelled, classes } => read_csv(path, *labelled, *classes)?,
            DataSpec::Idx { images, labels, limit } => read_idx(images, labels.as_deref(), *limit)?,
            DataSpec::Latent { autoencoder } => bail!(
                "data.kind = \"latent\": the codes of {} are computed on the training device (tilt train), not here",
                autoencoder.display()
            ),
            DataSpec::ImageFolder { path, size, channels, flip, skip_bad } => {
                let decoding = crate::image_folder::Decoding { size: *size, channels: *channels };
                let start = std::time::Instant::now();
                let folder = crate::image_folder::ImageFolder::scan(path, decoding, *skip_bad)?;
                eprintln!(
                    "data.path: {} images in {} classes, each decoded and hashed in {:.1} s",
                    folder.files.len(),
                    folder.class_names.len(),
                    start.elapsed().as_secs_f64()
                );
                if let Some(first) = folder.skipped.first() {
                    eprintln!(
                        "data.path: skipped {} file(s) that do not decode (skip_bad = true), the first {}",
                        folder.skipped.len(),
                        first.display()
                    );
                }
                Dataset {
                    x: Vec::new(),
                    labels: folder.labels.clone(),
                    dim: folder.dim(),
                    num_classes: folder.class_names.len(),
                    image: Some([*channels, *size, *size]),
                    streamed: Some(Streamed {
                        index: (0..folder.files.len()).collect(),
                        folder: Arc::new(folder),
                        flip: *flip,
                    }),
                }
            }
        })
    }
}

/// Read IDX images (and labels) as rows of pixels in [-1, 1].
pub fn read_idx(images: &std::path::Path, labels: Option<&std::path::Path>, limit: Option<usize>) -> Result<Dataset> {
    let set = crate::idx::read_images(images, labels)?;
    // As for CSV: labels are 0..K-1 and each occurs in the file, so one stray byte (a label of 200) cannot
    // silently create 201 classes.
    if let (Some(all), Some(path)) = (&set.labels, labels) {
        let k = all.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
        let mut seen = vec![false; k];
        for &c in all {
            seen[c as usize] = true;
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            let (first, last) = (all.iter().position(|&c| c as usize == k - 1).unwrap_or(0), k - 1);
            bail!(
                "{}: labels must be 0 to K-1 with each present, but label {missing} never occurs while label {last} \
                 does (first at item {first})",
                path.display()
            );
        }
    }
    let n = limit.map_or(set.count, |l| l.min(set.count));
    let dim = set.rows * set.cols;
    // As f32 the pixels take four times their bytes, and training holds the split copies beside them: probe that
    // working set fallibly, so an image file too large for this machine is refused by name, not by the allocator.
    let working_set = (n * dim).checked_mul(3 * std::mem::size_of::<f32>());
    if working_set.is_none_or(|b| Vec::<u8>::new().try_reserve_exact(b).is_err()) {
        bail!(
            "{}: {n} images of {} x {} need about {:.1} GB as training data, which cannot be allocated here; set \
             data.limit to use fewer images",
            images.display(),
            set.rows,
            set.cols,
            working_set.map_or(f64::INFINITY, |b| b as f64 / 1e9)
        );
    }
    let mut x = Vec::new();
    x.try_reserve_exact(n * dim).map_err(|_| anyhow::anyhow!("{}: out of memory for the pixels", images.display()))?;
    x.extend(set.pixels[..n * dim].iter().map(|&p| p as f32 / 127.5 - 1.0));
    let labels: Option<Vec<usize>> = set.labels.map(|l| l[..n].iter().map(|&c| c as usize).collect());
    let num_classes = labels.as_ref().and_then(|l| l.iter().max()).map_or(0, |m| m + 1);
    Ok(Dataset { x, labels, dim, num_classes, image: Some([1, set.rows, set.cols]), streamed: None })
}

/// Read `x1,...,xd[,label]` rows; errors name the file, the line (as an editor counts it) and the column.
pub fn read_csv(path: &std::path::Path, labelled: bool, classes: Option<usize>) -> Result<Dataset> {
    let raw = std::fs::read(path).with_context(|| format!("cannot open data file {}", path.display()))?;
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(raw.as_slice());
    let (mut x, mut labels, mut dim) = (Vec::new(), Vec::new(), None::<usize>);
    let mut first_line_of = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: record {}: unreadable CSV", path.display(), i + 1))?;
        // The csv reader skips blank lines, and a record's position is where the skipping began: add them.
        let line = rec.position().map_or(i as u64 + 1, |p| {
            let blank = raw[p.byte() as usize..].iter().take_while(|b| matches!(b, b'\n' | b'\r'));
            p.line() + blank.filter(|b| **b == b'\n').count() as u64
        });
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        // A header has no numeric field ("x1,x2,label"); a first row with numbers and one typo ("0.5,abc,1") is a
        // data row, and its typo an error like on any other line.
        let is_header = i == 0 && rec.iter().all(|f| f.parse::<f64>().is_err());
        if is_header {
            continue;
        }
        let n_feat = rec.len() - usize::from(labelled);
        if n_feat == 0 {
            bail!(
                "{}: line {line}: expected at least one coordinate{}",
                path.display(),
                if labelled { " and a label" } else { "" }
            );
        }
        match dim {
            None => dim = Some(n_feat),
            Some(d) if d != n_feat => bail!(
                "{}: line {line}: expected {} columns like the first row, got {}",
                path.display(),
                d + usize::from(labelled),
                rec.len()
            ),
            _ => {}
        }
        for (j, f) in rec.iter().take(n_feat).enumerate() {
            let v: f64 = f.parse().map_err(|_| {
                anyhow::anyhow!("{}: line {line}, column {}: expected a number, got {f:?}", path.display(), j + 1)
            })?;
            // Training runs in f32: 1e300 is finite in f64 but not in f32.
            if !(v as f32).is_finite() {
                bail!(
                    "{}: line {line}, column {}: expected a finite number within the f32 range (±3.4e38), got {f}",
                    path.display(),
                    j + 1
                );
            }
            x.push(v as f32);
        }
        if labelled {
            let f = &rec[n_feat];
            let what = || {
                format!(
                    "{}: line {line}, column {}: expected a class label (0, 1, ...{}), got {f:?}",
                    path.display(),
                    n_feat + 1,
                    classes.map_or(String::new(), |k| format!(" below data.classes = {k}"))
                )
            };
            let c: usize = f.parse().map_err(|_| anyhow::anyhow!(what()))?;
            if c >= classes.unwrap_or(MAX_CLASSES) {
                bail!("{}", what());
            }
            if c >= first_line_of.len() {
                first_line_of.resize(c + 1, None);
            }
            first_line_of[c].get_or_insert(line);
            labels.push(c);
        }
    }
    let Some(dim) = dim else { bail!("{}: no data rows", path.display()) };
    let num_classes = match classes {
        Some(k) => k,
        None => {
            if let Some(missing) = first_line_of.iter().position(Option::is_none) {
                let (top, line) = (first_line_of.len() - 1, first_line_of.last().copied().flatten().unwrap_or(0));
                bail!(
                    "{}: line {line}: label {top}, but class {missing} has no rows; labels must be 0, 1, ..., K-1 \
                     (set data.classes = K to declare classes without rows)",
                    path.display()
                );
            }
            first_line_of.len()
        }
    };
    Ok(Dataset { x, labels: labelled.then_some(labels), dim, num_classes, image: None, streamed: None })
}

/// The latent codes of the images autoencoder run `autoencoder` was trained on (all of them, encoded on `device`
/// in batches of 500), with their labels: the data of `data.kind = "latent"`.
pub fn latent_codes(autoencoder: &std::path::Path, device: &burn::prelude::Device) -> Result<Dataset> {
    let (ae, state) = crate::load::load_autoencoder(autoencoder, device)
        .with_context(|| format!("data.autoencoder = {}", autoencoder.display()))?;
    let images = state
        .config
        .data
        .generate(state.config.data_size, state.config.seed)
        .with_context(|| format!("data.autoencoder = {}: the images it was trained on", autoencoder.display()))?;
    let mut codes = Vec::new();
    for start in (0..images.len()).step_by(500) {
        let idx: Vec<usize> = (start..(start + 500).min(images.len())).collect();
        let mut rows = images.clean_rows(&idx)?;
        state.standardizer.apply(&mut rows);
        let x = tilt_core::tensor_ext::matrix(&rows, idx.len(), images.dim, device);
        codes.extend(tilt_core::tensor_ext::to_vec(ae.encode(x)));
    }
    let dim = codes.len() / images.len();
    Ok(Dataset {
        x: codes,
        labels: images.labels.clone(),
        dim,
        num_classes: images.num_classes,
        image: None,
        streamed: None,
    })
}

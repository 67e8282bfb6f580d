//! A folder of PNG and JPEG images as training data, decoded on demand: classes are the sorted names of its
//! sub-folders (torchvision's `ImageFolder` convention), every image is resized (shorter side to `size`) and
//! centre-cropped to `size × size`, in 1 or 3 channels, scaled to [-1, 1]. Only the list of files and their labels
//! stay in memory; the pixels of a batch are decoded when the batch is drawn, by a bounded pool of worker threads,
//! and the next step's batch is decoded in the background while the current step computes (a prefetch of one batch:
//! the next indices and flips are known ahead because each step draws them first from its own random stream).

use anyhow::{Context, Result, bail};
use image::imageops::FilterType;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The file extensions read as images (compared without case).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
/// The largest image side accepted (`size`).
pub const MAX_SIZE: usize = 4096;
/// Most files a folder may hold.
const MAX_FILES: usize = 50_000_000;

/// How images become rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoding {
    /// Side of the square image.
    pub size: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
}

/// The scanned folder: files, labels, class names and the content hash.
#[derive(Debug)]
pub struct ImageFolder {
    /// The folder.
    pub root: PathBuf,
    /// Every image file, in order (classes sorted, files sorted within a class).
    pub files: Vec<PathBuf>,
    /// The label of each file (`None` for a folder without class sub-folders).
    pub labels: Option<Vec<usize>>,
    /// The class names, the sub-folder names in label order.
    pub class_names: Vec<String>,
    /// How the images are decoded.
    pub decoding: Decoding,
    /// SHA-256 over the decoding settings and every file's relative name and bytes.
    pub sha256: String,
    /// Files that did not decode and were skipped (`skip_bad`).
    pub skipped: Vec<PathBuf>,
    /// The batch being decoded ahead: its files, flips and the decoding thread.
    prefetched: std::sync::Mutex<Option<Prefetch>>,
    /// Batches served from the prefetch.
    hits: std::sync::atomic::AtomicUsize,
}

/// One batch decoded on a background thread.
#[derive(Debug)]
struct Prefetch {
    files: Vec<usize>,
    mirrored: Vec<bool>,
    handle: std::thread::JoinHandle<Result<Vec<f32>>>,
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Image files under `dir`, recursively, sorted by path.
fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("data.path: cannot list {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("data.path: cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            images_under(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
            if out.len() > MAX_FILES {
                bail!("data.path: more than {MAX_FILES} images under {}", dir.display());
            }
        }
    }
    Ok(())
}

/// Decodes one file into `size × size × channels` values in [-1, 1], channel-major (`[c, h, w]`).
pub fn decode(path: &Path, d: Decoding) -> Result<Vec<f32>> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?
        .decode()
        .map_err(|e| anyhow::anyhow!("{}: does not decode as an image: {e}", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        bail!("{}: an empty image ({w} x {h})", path.display());
    }
    // The shorter side to `size`, the other in proportion (at least `size`), then the centre square.
    let s = d.size;
    let (rw, rh) = if w <= h { (s, (h * s).div_ceil(w).max(s)) } else { ((w * s).div_ceil(h).max(s), s) };
    let resized = if (rw, rh) == (w, h) { img } else { img.resize_exact(rw as u32, rh as u32, FilterType::Triangle) };
    let cropped = resized.crop_imm(((rw - s) / 2) as u32, ((rh - s) / 2) as u32, s as u32, s as u32);
    let scale = |v: u8| v as f32 / 127.5 - 1.0;
    Ok(if d.channels == 1 {
        cropped.to_luma8().pixels().map(|p| scale(p.0[0])).collect()
    } else {
        let rgb = cropped.to_rgb8();
        (0..3).flat_map(|c| rgb.pixels().map(move |p| scale(p.0[c])).collect::<Vec<_>>()).collect()
    })
}

/// Worker threads that decode a batch.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// Runs `f` on every item of `items` on a bounded pool of threads, results in order.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let chunk = items.len().div_ceil(workers()).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            items.chunks(chunk).map(|c| scope.spawn(|| c.iter().map(&f).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("a decoding thread panicked")).collect()
    })
}

impl ImageFolder {
    /// Lists the folder, checks that every image decodes (refusing the first that does not, naming it, or with
    /// `skip_bad` leaving it out) and hashes names and contents. Memory holds one batch of files at a time.
    pub fn scan(root: &Path, decoding: Decoding, skip_bad: bool) -> Result<Self> {
        if !root.is_dir() {
            bail!("data.path: {} is not a folder of images", root.display());
        }
        let mut entries: Vec<_> = std::fs::read_dir(root)
            .with_context(|| format!("data.path: cannot list {}", root.display()))?
            .collect::<std::io::Result<Vec<_>>>()?;
        entries.sort_by_key(|e| e.file_name());
        let class_dirs: Vec<PathBuf> = entries.iter().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let mut class_names = Vec::new();
        if class_dirs.is_empty() {
            images_under(root, &mut files)?;
        } else {
            if let Some(stray) = entries.iter().map(|e| e.path()).find(|p| p.is_file() && is_image(p)) {
                bail!(
                    "data.path: {} lies beside class folders; put every image in its class's folder (classes are the \
                     sub-folders of {})",
                    stray.display(),
                    root.display()
                );
            }
            for dir in &class_dirs {
                let before = files.len();
                images_under(dir, &mut files)?;
                if files.len() == before {
                    continue; // a folder without images is not a class
                }
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                labels.extend(std::iter::repeat_n(class_names.len(), files.len() - before));
                class_names.push(name);
            }
        }
        if files.is_empty() {
            bail!("data.path: no PNG or JPEG images under {}", root.display());
        }
        if class_names.len() > crate::data::MAX_CLASSES {
            bail!("data.path: {} class folders, at most {} supported", class_names.len(), crate::data::MAX_CLASSES);
        }
        let mut hash = Sha256::new();
        hash.update(format!("image-folder size={} channels={}\n", decoding.size, decoding.channels));
        let mut keep = vec![true; files.len()];
        let mut skipped = Vec::new();
        let batch = 256 * workers();
        for (chunk_index, chunk) in files.chunks(batch).enumerate() {
            let results = parallel(chunk, |p| -> Result<Vec<u8>> {
                let bytes = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
                decode(p, decoding)?;
                Ok(bytes)
            });
            for (i, (path, r)) in chunk.iter().zip(results).enumerate() {
                match r {
                    Ok(bytes) => {
                        let name = path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned();
                        hash.update((name.len() as u64).to_le_bytes());
                        hash.update(name.as_bytes());
                        hash.update((bytes.len() as u64).to_le_bytes());
                        hash.update(&bytes);
                    }
                    Err(e) if skip_bad => {
                        keep[chunk_index * batch + i] = false;
                        let _ = e;
                        skipped.push(path.clone());
                    }
                    Err(e) => {
                        return Err(
                            e.context("data.path: an image that does not decode (skip_bad = true skips such files)")
                        );
                    }
                }
            }
        }
        let mut kept = keep.iter();
        files.retain(|_| *kept.next().unwrap());
        let labels = (!class_names.is_empty()).then(|| {
            let mut kept = keep.iter();
            labels.retain(|_| *kept.next().unwrap());
            labels
        });
        if files.is_empty() {
            bail!("data.path: none of the {} images under {} decodes", skipped.len(), root.display());
        }
        let sha256 = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            root: root.to_path_buf(),
            files,
            labels,
            class_names,
            decoding,
            sha256,
            skipped,
            prefetched: std::sync::Mutex::new(None),
            hits: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Values per image.
    pub fn dim(&self) -> usize {
        self.decoding.channels * self.decoding.size * self.decoding.size
    }

    /// The rows of the files `idx`, decoded in parallel; with `flip`, each image is mirrored left-right with
    /// probability 1/2, drawn from `rng` in row order (so a run and its resumed twin flip alike).
    pub fn rows(&self, idx: &[usize], flip: Option<&mut ChaCha8Rng>) -> Result<Vec<f32>> {
        let mirrored: Vec<bool> = match flip {
            Some(rng) => idx.iter().map(|_| rng.random::<bool>()).collect(),
            None => vec![false; idx.len()],
        };
        let ahead = self.prefetched.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = ahead {
            let decoded = p.handle.join().map_err(|_| anyhow::anyhow!("data.path: a decoding thread panicked"))?;
            // A prediction that missed is dropped: the batch is then decoded here, the same bytes either way.
            if p.files == idx && p.mirrored == mirrored {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return decoded;
            }
        }
        decode_batch(&self.files, self.decoding, idx, &mirrored)
    }

    /// How many batches [`ImageFolder::rows`] took from the prefetch.
    pub fn prefetch_hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts decoding the files `idx` (with `mirrored` flips) on a background thread, for the next
    /// [`ImageFolder::rows`] that asks for exactly them.
    pub fn prefetch(self: &std::sync::Arc<Self>, idx: Vec<usize>, mirrored: Vec<bool>) {
        let folder = std::sync::Arc::clone(self);
        let (files, flips) = (idx.clone(), mirrored.clone());
        let handle = std::thread::spawn(move || decode_batch(&folder.files, folder.decoding, &files, &flips));
        let previous = self.prefetched.lock().unwrap_or_else(|e| e.into_inner()).replace(Prefetch {
            files: idx,
            mirrored,
            handle,
        });
        if let Some(p) = previous {
            let _ = p.handle.join();
        }
    }
}

/// Decodes the files `idx` of `files` in parallel, mirroring those marked in `mirrored`.
fn decode_batch(files: &[PathBuf], decoding: Decoding, idx: &[usize], mirrored: &[bool]) -> Result<Vec<f32>> {
    let s = decoding.size;
    let jobs: Vec<(usize, bool)> = idx.iter().copied().zip(mirrored.iter().copied()).collect();
    let decoded = parallel(&jobs, |&(i, m)| -> Result<Vec<f32>> {
        let mut v = decode(&files[i], decoding)?;
        if m {
            for row in v.chunks_exact_mut(s) {
                row.reverse();
            }
        }
        Ok(v)
    });
    let mut out = Vec::with_capacity(idx.len() * decoding.channels * s * s);
    for d in decoded {
        out.extend(d.context("data.path: an image changed or vanished since the run scanned the folder")?);
    }
    Ok(out)
}

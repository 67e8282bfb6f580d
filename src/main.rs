use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tilt::config::SampleConfig;
use tilt::{commands, device};

#[global_allocator]
static ALLOC: tilt::alloc::PeakAlloc = tilt::alloc::PeakAlloc;

/// tilt: guided diffusion (classifier-free, classifier and reward guidance as one rule) on Burn.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Backend: flex, ndarray, wgpu, vulkan or metal (those compiled in). Default: $BURN_DEVICE, else the
    /// first compiled backend.
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sweep a guidance strength on an analytic Gaussian mixture (exact scores).
    Sample {
        /// TOML config (see configs/).
        #[arg(long)]
        config: PathBuf,
        /// Output directory (absent or empty; an earlier `tilt sample` output is replaced only with --force).
        #[arg(long)]
        out: PathBuf,
        /// Write into an --out that holds other files: files with the names this command writes are replaced.
        #[arg(long)]
        force: bool,
    },
    /// Train a score network, classifier or reward-weighted score (see configs/train_*.toml).
    Train {
        #[arg(long)]
        config: PathBuf,
        /// Run directory (checkpoints, loss.csv, loss.png).
        #[arg(long)]
        out: PathBuf,
        /// Continue the run in --out from its latest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Start a new run in an --out that holds other files (a run's own file names are replaced, others kept).
        #[arg(long, conflicts_with = "resume")]
        force: bool,
    },
    /// Run the papers' experiments and write a report (configs/experiments/).
    Reproduce {
        #[arg(long, value_enum, default_value = "fast")]
        preset: commands::reproduce::Preset,
        #[arg(long, num_args = 1..,
              help = format!("Run only these experiments ({})", commands::reproduce::stage_names()))]
        only: Vec<String>,
        #[arg(long, default_value = "out/reproduce")]
        out: PathBuf,
        /// Re-run stages whose outputs are already complete, and write into an --out that holds other files.
        #[arg(long)]
        force: bool,
    },
    /// The fast preset of `reproduce` into out/demo: the short, complete tour.
    Demo {
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// As `reproduce --force`.
        #[arg(long)]
        force: bool,
    },
    /// Export a checkpoint's EMA weights as SafeTensors, or a U-Net run as a diffusers model folder.
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        /// The .safetensors file, or the folder of --format diffusers.
        #[arg(long)]
        out: PathBuf,
        /// `safetensors` (tilt's module names) or `diffusers` (a folder `UNet2DModel.from_pretrained` loads).
        #[arg(long, value_enum, default_value = "safetensors")]
        format: commands::export::Format,
        /// Replace an existing --out file (or an earlier export in the --out folder).
        #[arg(long)]
        force: bool,
    },
    /// One raw forward pass of a network (a diffusers model folder or a tilt run) on tensors `sample`, `timestep`
    /// (the model's own units: diffusers' timesteps for diffusers models and tilt's U-Net, t in [0, 1] for tilt's
    /// MLP) and, for a
    /// class-conditional model, `class_labels` from a safetensors file; writes tensor `sample`.
    Forward {
        /// A diffusers model or pipeline folder, or a tilt run.
        #[arg(long)]
        model: PathBuf,
        /// safetensors file with `sample` [n, c, h, w] (or [n, d]), `timestep` [n] and optional `class_labels` [n].
        #[arg(long)]
        input: PathBuf,
        /// safetensors file to write (tensor `sample`).
        #[arg(long)]
        out: PathBuf,
        /// Also time this many forwards after one warm-up and print the median (loading excluded; the host-device
        /// copies of input and output included).
        #[arg(long, default_value_t = 0)]
        repeat: usize,
    },
    /// List the backends compiled into this binary.
    Devices,
}

fn main() -> Result<()> {
    tilt::alloc::keep_freed_memory();
    // A file-size limit (`ulimit -f`) would otherwise kill tilt with SIGXFSZ mid-write, with no message and a
    // temporary left behind; ignored, the write fails with EFBIG and the error names the file.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    // The first use of rayon in the process, so an error is a failure to start the threads (a process limit).
    tilt::threads::init_pool().map_err(|e| {
        let threads =
            std::env::var("RAYON_NUM_THREADS").map_or("one per CPU".into(), |n| format!("RAYON_NUM_THREADS={n}"));
        anyhow::anyhow!("could not start tilt's worker threads ({threads}): {e}")
    })?;
    tilt::threads::run_on_worker(move || run(cli))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Sample { config, out, force } => {
            let cfg = SampleConfig::load(&config)?;
            let device = device::select(cli.device.as_deref())?;
            eprintln!("tilt sample: {} on {}", config.display(), device::describe(&device));
            commands::sample::run(&cfg, &out, force, &device)?;
            eprintln!("wrote {}", out.join("summary.json").display());
        }
        Command::Train { config, out, resume, force } => {
            let device = device::select(cli.device.as_deref())?;
            eprintln!("tilt train: {} on {}", config.display(), device::describe(&device));
            let start = match (resume, force) {
                (true, _) => tilt_train::Start::Resume,
                (false, true) => tilt_train::Start::NewOverwriting,
                (false, false) => tilt_train::Start::New,
            };
            let o = commands::train::run(&config, &out, start, &device)?;
            eprintln!(
                "trained {} steps in {:.1} s: final loss {:.4}{}; checkpoint {}",
                o.steps,
                o.seconds,
                o.final_loss,
                o.test_loss.map_or(String::new(), |t| format!(", test loss {t:.4}")),
                o.checkpoint.display()
            );
        }
        Command::Reproduce { preset, only, out, force } => {
            reproduce(preset, &only, &out, force, cli.device.as_deref())?
        }
        Command::Demo { out, force } => {
            reproduce(commands::reproduce::Preset::Fast, &[], &out, force, cli.device.as_deref())?
        }
        Command::Export { checkpoint, out, format, force } => {
            let device = device::select(cli.device.as_deref())?;
            match format {
                commands::export::Format::Safetensors => commands::export::run(&checkpoint, &out, force, &device)?,
                commands::export::Format::Diffusers => {
                    if let Some(note) = commands::export::run_diffusers(&checkpoint, &out, force, &device)? {
                        eprintln!("{note}");
                    }
                }
            }
            eprintln!("wrote {}", out.display());
        }
        Command::Forward { model, input, out, repeat } => {
            let device = device::select(cli.device.as_deref())?;
            let median = commands::forward::run(&model, &input, &out, repeat, &device)?;
            eprintln!("wrote {}", out.display());
            if let Some(s) = median {
                println!("median {s:.6} s per forward over {repeat} runs on {}", device::describe(&device));
            }
        }
        Command::Devices => println!("{}", device::compiled_backends().join("\n")),
    }
    Ok(())
}

fn reproduce(
    preset: commands::reproduce::Preset,
    only: &[String],
    out: &std::path::Path,
    force: bool,
    device: Option<&str>,
) -> Result<()> {
    let device = device::select(device)?;
    eprintln!("tilt reproduce: preset {preset:?} on {}", device::describe(&device));
    let outcomes = commands::reproduce::run(preset, only, out, force, &device)?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            commands::reproduce::Outcome::Failed(n, _) => Some(n.clone()),
            _ => None,
        })
        .collect();
    eprintln!("wrote {}", out.join("report.md").display());
    if !failed.is_empty() {
        anyhow::bail!(
            "{} stage(s) failed: {} (see {})",
            failed.len(),
            failed.join(", "),
            out.join("report.md").display()
        );
    }
    Ok(())
}

//! `pgaas completions SHELL` and `pgaas man DIR`: shell completions and man pages generated from
//! the command definitions, so they never drift from `--help`. The package and `pgaas install`
//! put them where the shell and `man` look.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory for the pages (pgaas.1, pgaas-db.1, pgaas-db-create.1, ...); created if missing.
    pub dir: PathBuf,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "pgaas", &mut script);
    // `| head` closing the pipe is not an error worth a panic.
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let written = write_man_pages(&args.dir)?;
    println!("{written} man pages in {}", args.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// One page per command and subcommand; returns how many were written.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = super::Cli::command();
    cmd.build();
    let mut written = 0;
    write_page(&cmd, "pgaas", dir, &mut written)?;
    Ok(written)
}

fn write_page(cmd: &clap::Command, name: &str, dir: &Path, n: &mut usize) -> anyhow::Result<()> {
    // Each page is titled with its full command (pgaas-db-create), as git's pages are.
    let page = cmd
        .clone()
        .name(name.to_string())
        .version(env!("CARGO_PKG_VERSION"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, &out).with_context(|| format!("writing {}", path.display()))?;
    *n += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page(sub, &format!("{name}-{}", sub.get_name()), dir, n)?;
    }
    Ok(())
}

/// Everything `pgaas install` puts in place: man pages and the completions of bash, zsh and fish,
/// at the paths Debian's packages of those shells read.
pub fn generated() -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = tempfile::tempdir()?;
    write_man_pages(dir.path())?;
    let mut files = Vec::new();
    let mut pages: Vec<_> = std::fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
    pages.sort_by_key(|e| e.file_name());
    for page in pages {
        let target = Path::new("/usr/share/man/man1").join(page.file_name());
        files.push((target, std::fs::read(page.path())?));
    }
    for (shell, path) in [
        (Shell::Bash, "/usr/share/bash-completion/completions/pgaas"),
        (Shell::Zsh, "/usr/share/zsh/vendor-completions/_pgaas"),
        (
            Shell::Fish,
            "/usr/share/fish/vendor_completions.d/pgaas.fish",
        ),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut super::Cli::command(), "pgaas", &mut script);
        files.push((PathBuf::from(path), script));
    }
    Ok(files)
}

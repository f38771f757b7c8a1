//! Writes the man pages and shell completions that the Debian packages install, from the same
//! clap definition as the binary (`src/cli.rs`).
//!
//! `cargo run --locked --example dist-docs -- OUT_DIR` writes `OUT_DIR/man/*.1` and
//! `OUT_DIR/completions/{xxl-edge.bash,_xxl-edge,xxl-edge.fish}`; `.ci/deb.sh` runs it.
//! It is an example, not a subcommand, so that clap_complete and clap_mangen (dev-dependencies)
//! never reach the device binary; the pages do not depend on the target, so one native run
//! serves the packages of every architecture.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

#[allow(dead_code)] // the fields are read by `main.rs`, not here
#[path = "../src/cli.rs"]
mod cli;

const NAME: &str = "xxl-edge";

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: dist-docs OUT_DIR");
        return ExitCode::from(64);
    };
    match write_all(&out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dist-docs: cannot write into {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn write_all(out: &Path) -> io::Result<Vec<PathBuf>> {
    // The pages are shared by the packages of every architecture: the plain version, not the
    // target and commit that `--version` prints.
    let mut cmd = cli::Cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();

    let man = out.join("man");
    fs::create_dir_all(&man)?;
    let source = format!("{NAME} {}", env!("CARGO_PKG_VERSION"));
    let page = |c: clap::Command| Man::new(c).source(source.clone()).manual("xxl-edge manual");
    let top = man.join(format!("{NAME}.1"));
    let mut f = fs::File::create(&top)?;
    page(cmd.clone()).render(&mut f)?;
    f.write_all(extra_sections().render().as_bytes())?;
    written.push(top);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(page(sub.clone()).generate_to(&man)?);
    }

    let comp = out.join("completions");
    fs::create_dir_all(&comp)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd.clone(),
            NAME,
            &comp,
        )?);
    }
    Ok(written)
}

/// What the generated page cannot know from clap: exit codes, files, signals.
fn extra_sections() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        (
            "0",
            "success; serve stopped gracefully on SIGTERM or SIGINT",
        ),
        (
            "1",
            "runtime failure (cannot bind, I/O error, a triggered run that failed)",
        ),
        (
            "2",
            "the store cannot be used (damaged, or locked by another xxl-edge)",
        ),
        ("64", "bad configuration or usage; a restart cannot fix it"),
        (
            "75",
            "storage fault while serving (disk full, read-only, I/O error): restart once it clears",
        ),
    ] {
        r.control("TP", [])
            .text([bold(code)])
            .text([roman(meaning)]);
    }
    r.control("SH", ["SIGNALS"]);
    r.text([roman(
        "SIGTERM and SIGINT stop serve gracefully: no new triggers, registryRemove to every \
         admin, running jobs get runner.shutdown_grace_secs, the rest are killed, callbacks \
         are delivered (what cannot be stays in the outbox for the next start).",
    )]);
    r.control("SH", ["FILES"]);
    for (path, meaning) in [
        (
            "/etc/xxl-edge/xxl-edge.toml",
            "configuration read by the packaged systemd unit (xxl-edge.service)",
        ),
        (
            "/var/lib/xxl-edge",
            "data directory of the packaged unit: the store, GLUE sources, the state socket",
        ),
    ] {
        r.control("TP", [])
            .text([bold(path)])
            .text([roman(meaning)]);
    }
    r.control("SH", ["SEE ALSO"]);
    r.text([roman(
        "systemctl(1), systemd.exec(5); /usr/share/doc/xxl-edge/README.md for the \
         configuration reference.",
    )]);
    r
}

//! What a scenario hands back: tables of measurements, targets met or
//! missed, notes, the raw figures as JSON, and the machine they were
//! measured on (date, cores, CPU model, commit, load average, since other
//! work on a shared machine is the main source of noise). Renders as JSON
//! for scripts and as Markdown for BENCHMARKS.md.

use std::fmt::Write as _;
use std::process::Command;

use serde::Serialize;

/// The machine and moment of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date: String,
    pub nproc: usize,
    pub cpu: String,
    pub commit: String,
    /// 1-minute load average when the scenario started.
    pub load_avg: f64,
}

impl Machine {
    pub fn probe() -> Machine {
        let out = |cmd: &mut Command| {
            cmd.output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            date: out(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .unwrap_or_else(|| "unknown".into()),
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            commit: out(Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|| "unknown".into()),
            load_avg: load_avg(),
        }
    }
}

/// The 1-minute load average.
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

/// A table of results.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        if !self.title.is_empty() {
            let _ = writeln!(s, "*{}*\n", self.title);
        }
        let _ = writeln!(s, "| {} |", self.headers.join(" | "));
        let _ = writeln!(
            s,
            "|{}",
            self.headers.iter().map(|_| "---|").collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }
}

/// A target of the issue and what was measured against it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

impl Target {
    pub fn new(
        what: impl Into<String>,
        target: impl Into<String>,
        measured: impl Into<String>,
        met: bool,
    ) -> Target {
        Target {
            what: what.into(),
            target: target.into(),
            measured: measured.into(),
            met,
        }
    }
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub quick: bool,
    pub machine: Machine,
    pub wall_s: f64,
    pub tables: Vec<Table>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    /// Every raw figure, for scripts.
    pub data: serde_json::Value,
}

impl Report {
    pub fn new(scenario: &str, quick: bool) -> Report {
        Report {
            scenario: scenario.into(),
            quick,
            machine: Machine::probe(),
            wall_s: 0.0,
            tables: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
            data: serde_json::Value::Null,
        }
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    pub fn target(&mut self, t: Target) {
        self.targets.push(t);
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "### {}{}\n\n{}, {} × {}, commit {}, load average {:.1} at start, {:.0} s\n",
            self.scenario,
            if self.quick { " (quick)" } else { "" },
            m.date,
            m.nproc,
            m.cpu,
            m.commit,
            m.load_avg,
            self.wall_s
        );
        for t in &self.tables {
            let _ = writeln!(s, "{}", t.markdown());
        }
        if !self.targets.is_empty() {
            let _ = writeln!(s, "| target | wanted | measured | |\n|---|---|---|---|");
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    t.what,
                    t.target,
                    t.measured,
                    if t.met { "met" } else { "**missed**" }
                );
            }
            s.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        s
    }
}

/// `x` with `digits` decimals.
pub fn f(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

/// An optional figure, `-` when absent.
pub fn fo(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| f(v, digits))
}

/// Bits per second as Mbit/s with 3 significant-ish digits.
pub fn mbit(bps: f64) -> String {
    let m = bps / 1e6;
    if m >= 100.0 {
        format!("{m:.0}")
    } else if m >= 10.0 {
        format!("{m:.1}")
    } else {
        format!("{m:.3}")
    }
}

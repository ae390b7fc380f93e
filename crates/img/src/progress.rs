//! Progress reporting for `-p` (convert, commit).
//!
//! On a terminal, an indicatif bar with throughput and time left. Otherwise qemu-img's
//! own progress lines, `    (NN.NN/100%)` separated by carriage returns and ended by
//! a newline, so that scripts which parse qemu-img's output keep working.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};

/// Where progress goes, if anywhere.
pub enum Progress {
    /// `-p` was not given (or `-q` was).
    Off,
    /// qemu-img's text lines; the last percentage printed, in hundredths.
    Lines { total: u64, last: Option<u64> },
    /// A bar on the terminal.
    Bar(ProgressBar),
}

impl Progress {
    /// Progress over `total` bytes, shown when `enabled`.
    pub fn new(enabled: bool, total: u64) -> Progress {
        if !enabled {
            Progress::Off
        } else if std::io::stdout().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("static template"),
            );
            Progress::Bar(bar)
        } else {
            Progress::Lines { total, last: None }
        }
    }

    /// Reports that `done` bytes of the total are finished.
    pub fn set(&mut self, done: u64) {
        match self {
            Progress::Off => {}
            Progress::Bar(b) => b.set_position(done),
            Progress::Lines { total, last } => {
                let hundredths = match *total {
                    0 => 10_000,
                    t => (done.min(t) as u128 * 10_000 / t as u128) as u64,
                };
                // qemu-img prints when the value moves by more than 1%, and always at
                // 0% and 100%.
                if last.is_some_and(|l| {
                    hundredths <= l + 100 && hundredths + 100 >= l && hundredths % 10_000 != 0
                }) {
                    return;
                }
                *last = Some(hundredths);
                let mut out = std::io::stdout().lock();
                let _ = write!(
                    out,
                    "    ({}.{:02}/100%)\r",
                    hundredths / 100,
                    hundredths % 100
                );
                let _ = out.flush();
            }
        }
    }

    /// Shows 100% and ends the progress display.
    pub fn finish(&mut self) {
        match self {
            Progress::Off => {}
            Progress::Bar(b) => b.finish(),
            Progress::Lines { total, .. } => {
                let t = *total;
                self.set(t);
                println!();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_mode_is_quiet_between_whole_percents() {
        let mut p = Progress::Lines {
            total: 1000,
            last: None,
        };
        p.set(0);
        p.set(5); // 0.5%: no new line
        assert!(matches!(p, Progress::Lines { last: Some(0), .. }));
        p.set(12);
        assert!(matches!(
            p,
            Progress::Lines {
                last: Some(120),
                ..
            }
        ));
        p.set(1000);
        assert!(matches!(
            p,
            Progress::Lines {
                last: Some(10_000),
                ..
            }
        ));
    }
}

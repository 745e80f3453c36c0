//! Prometheus text exposition format 0.0.4, written by hand.
//!
//! `/metrics` and the Pushgateway push both render through this one writer so
//! the escaping rules and the `# HELP`/`# TYPE` bookkeeping live in one place
//! (promtool rejects a family whose samples are split, and the Pushgateway
//! rejects a body without a final newline).

use std::fmt::Write;

/// Accumulates one exposition document.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

/// The metric type written on a family's `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a metric family; every sample of the family must follow at once.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        push_escaped(&mut self.text, help, false);
        self.text.push_str("\n# TYPE ");
        self.text.push_str(name);
        self.text.push(' ');
        self.text.push_str(kind);
        self.text.push('\n');
        self
    }

    /// One sample; `labels` are (name, value) pairs, values escaped here.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                // Escaped straight into the document: a scrape writes
                // hundreds of labels, and an allocation for each showed.
                self.text.push_str(label);
                self.text.push_str("=\"");
                push_escaped(&mut self.text, value, true);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        write_value(&mut self.text, value);
        self.text.push('\n');
        self
    }

    /// A family with exactly one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) -> &mut Self {
        self.family(name, help, kind).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

/// Appends `text` escaped as the format wants: backslash and newline
/// always, the double quote too in a label value.
fn push_escaped(out: &mut String, text: &str, label: bool) {
    if !text.contains(['\\', '\n', '"']) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values_and_ends_with_newline() {
        let mut exp = Exposition::new();
        exp.family("x_total", "Things.", Kind::Counter).sample(
            "x_total",
            &[("path", "a\"b\\c\nd")],
            3.0,
        );
        let text = exp.finish();
        assert_eq!(
            text,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{path=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }

    #[test]
    fn writes_fractions_and_special_values() {
        let mut s = String::new();
        write_value(&mut s, 1.5);
        s.push(' ');
        write_value(&mut s, f64::NAN);
        s.push(' ');
        write_value(&mut s, f64::INFINITY);
        assert_eq!(s, "1.5 NaN +Inf");
    }
}

//! Errors of the simulator library.

use std::fmt;

/// One problem in an input file (profile, nodeset, flag), located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or `--flag`) the problem is in.
    pub source: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key path or element, e.g. `group[2].node[0].sim.kind` or `<UAVariable NodeId="ns=1;s=X">`.
    pub element: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: {}: {}",
                self.source, line, self.element, self.message
            ),
            None => write!(f, "{}: {}: {}", self.source, self.element, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Bad input: every problem found, not only the first. The binary exits with code 2.
    #[error("{}", list(.0))]
    Input(Vec<Problem>),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opc ua server: {0}")]
    Server(String),
}

impl SimError {
    pub fn input(
        source: impl Into<String>,
        line: Option<usize>,
        element: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        SimError::Input(vec![Problem {
            source: source.into(),
            line,
            element: element.into(),
            message: message.into(),
        }])
    }

    /// True for errors in what the user gave us (exit code 2), false for runtime failures.
    pub fn is_input(&self) -> bool {
        matches!(self, SimError::Input(_))
    }
}

fn list(problems: &[Problem]) -> String {
    let mut s = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&p.to_string());
    }
    s
}

/// 1-based line number of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

//! The bench's report: one row per figure, the table (text and Markdown), the summary line,
//! and the spread of chosen figures over several runs.

use std::sync::Mutex;

/// One figure of one run.
pub struct Row {
    pub fig: String,
    pub name: String,
    pub value: String,
    pub floor: String,
    /// value / floor, measured against the clean floor (the target's base).
    pub ratio: Option<f64>,
    /// The same against a floor interleaved with the agent's work (informational).
    pub interleaved: Option<f64>,
    pub target: String,
    /// None: could not be measured.
    pub met: Option<bool>,
    /// Informational: shown, counted in no total.
    pub info: bool,
    /// The figure's number when it is not a ratio, for the spread over runs (and its unit).
    pub num: Option<(f64, &'static str)>,
}

impl Row {
    pub fn new(fig: &str, name: &str) -> Row {
        Row {
            fig: fig.into(),
            name: name.into(),
            value: "-".into(),
            floor: "-".into(),
            ratio: None,
            interleaved: None,
            target: "-".into(),
            met: None,
            info: false,
            num: None,
        }
    }

    pub fn error(fig: &str, name: &str, target: &str, why: &str) -> Row {
        let mut r = Row::new(fig, name);
        r.value = format!("ERROR: {}", why.lines().next().unwrap_or(why));
        r.target = target.into();
        r
    }

    fn met_text(&self) -> &'static str {
        match (self.info, self.met) {
            (true, _) => "(info)",
            (_, Some(true)) => "yes",
            (_, Some(false)) => "NO",
            (_, None) => "n/a",
        }
    }

    fn ratio_text(&self) -> String {
        match (self.ratio, self.interleaved) {
            (Some(r), Some(i)) => format!("{r:.2}× (interleaved {i:.2}×)"),
            (Some(r), None) => format!("{r:.2}×"),
            _ => "-".into(),
        }
    }

    /// The number the spread compares: the ratio, else `num`.
    fn key(&self) -> Option<f64> {
        self.ratio.or(self.num.map(|n| n.0))
    }

    fn key_text(&self, x: f64) -> String {
        match (self.ratio, self.num) {
            (Some(_), _) => format!("{x:.2}×"),
            (None, Some((_, unit))) => format!("{x:.4}{unit}"),
            _ => format!("{x}"),
        }
    }
}

/// Notes printed as they come and listed under the table: details, counts, diagnostics.
#[derive(Default)]
pub struct Notes(pub Mutex<Vec<String>>);

impl Notes {
    pub fn add(&self, s: impl Into<String>) {
        let s = s.into();
        println!("    · {s}");
        self.0.lock().expect("notes lock").push(s);
    }
}

/// Rows in figure order: 1, 2, 3, 3b, …, 10, 11.
pub fn sort(rows: &mut [Row]) {
    let key = |f: &str| -> (u32, String) {
        let n: String = f.chars().take_while(char::is_ascii_digit).collect();
        (n.parse().unwrap_or(99), f.to_string())
    };
    rows.sort_by_key(|r| key(&r.fig));
}

/// "12 of 12 targets met, 0 missed, 0 not measured (+ 1 informational)".
pub fn counts(rows: &[Row]) -> String {
    let targets: Vec<&Row> = rows.iter().filter(|r| !r.info).collect();
    let met = targets.iter().filter(|r| r.met == Some(true)).count();
    let missed = targets.iter().filter(|r| r.met == Some(false)).count();
    let unmeasured = targets.iter().filter(|r| r.met.is_none()).count();
    let info = rows.len() - targets.len();
    let mut s = format!("{met} of {} targets met, {missed} missed, {unmeasured} not measured", targets.len());
    if info > 0 {
        s.push_str(&format!(" (+ {info} informational)"));
    }
    s
}

/// The table as aligned text and as Markdown.
pub fn table(rows: &[Row]) -> (String, String) {
    let head = ["#", "figure", "value", "floor", "ratio", "target", "met"].map(String::from);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.fig.clone(),
                r.name.clone(),
                r.value.clone(),
                r.floor.clone(),
                r.ratio_text(),
                r.target.clone(),
                r.met_text().to_string(),
            ]
        })
        .collect();
    render(&head, &cells)
}

/// The spread of `figs` over runs: each run's figure, then min, median and max, and in how
/// many runs the target was met. None when no run has any of them (`--only`).
pub fn spread(runs: &[&[Row]], figs: &[&str]) -> Option<(String, String)> {
    let n = runs.len();
    let mut head: Vec<String> = vec!["#".into(), "figure".into()];
    head.extend((1..=n).map(|i| format!("run {i}")));
    head.extend(["min", "median", "max", "target", "met"].map(String::from));
    let mut cells = Vec::new();
    for fig in figs {
        let found: Vec<Option<&Row>> = runs.iter().map(|rows| rows.iter().find(|r| r.fig == *fig)).collect();
        let Some(first) = found.iter().flatten().next() else { continue };
        let mut keys: Vec<f64> = found.iter().flatten().filter_map(|r| r.key()).collect();
        keys.sort_by(f64::total_cmp);
        let mut c = vec![first.fig.clone(), first.name.clone()];
        c.extend(found.iter().map(|r| r.and_then(|r| r.key().map(|x| r.key_text(x))).unwrap_or_else(|| "-".into())));
        let at = |i: usize| keys.get(i).map_or("-".into(), |x| first.key_text(*x));
        let median = if keys.is_empty() { "-".into() } else { first.key_text(crate::proc::median(&keys)) };
        c.extend([at(0), median, at(keys.len().wrapping_sub(1)), first.target.clone()]);
        c.push(if first.info {
            "(info)".into()
        } else {
            format!("{}/{n}", found.iter().flatten().filter(|r| r.met == Some(true)).count())
        });
        cells.push(c);
    }
    (!cells.is_empty()).then(|| render(&head, &cells))
}

fn render(head: &[String], cells: &[Vec<String>]) -> (String, String) {
    let cols = head.len();
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for c in cells {
        for i in 0..cols {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |c: &[String]| -> String {
        let mut s = String::new();
        for i in 0..cols {
            s.push_str(&c[i]);
            s.push_str(&" ".repeat(w[i] - c[i].chars().count()));
            s.push_str("  ");
        }
        s.trim_end().to_string()
    };
    let mut text = line(head);
    text.push('\n');
    text.push_str(&"-".repeat(w.iter().sum::<usize>() + 2 * (cols - 1)));
    text.push('\n');
    for c in cells {
        text.push_str(&line(c));
        text.push('\n');
    }
    let mut md = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(cols));
    for c in cells {
        let mut row: Vec<String> = c.iter().map(|x| x.replace('|', "\\|")).collect();
        if row[cols - 1] == "NO" {
            row[cols - 1] = "**NO**".into();
        }
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    (text, md)
}

//! The bench's report: one row per figure, and the table (text and Markdown).

use std::sync::Mutex;

pub struct Row {
    pub fig: String,
    pub name: String,
    pub value: String,
    pub floor: String,
    pub ratio: Option<f64>,
    pub target: String,
    /// None: could not be measured.
    pub met: Option<bool>,
}

impl Row {
    pub fn new(fig: &str, name: &str) -> Row {
        Row {
            fig: fig.into(),
            name: name.into(),
            value: "-".into(),
            floor: "-".into(),
            ratio: None,
            target: "-".into(),
            met: None,
        }
    }

    pub fn error(fig: &str, name: &str, target: &str, why: &str) -> Row {
        let mut r = Row::new(fig, name);
        r.value = format!("ERROR: {}", why.lines().next().unwrap_or(why));
        r.target = target.into();
        r
    }

    fn met_text(&self) -> &'static str {
        match self.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "n/a",
        }
    }
}

/// Notes printed under the table: details, counts, diagnostics.
#[derive(Default)]
pub struct Notes(pub Mutex<Vec<String>>);

impl Notes {
    pub fn add(&self, s: impl Into<String>) {
        let s = s.into();
        println!("    · {s}");
        self.0.lock().unwrap().push(s);
    }
}

/// The table as aligned text and as Markdown.
pub fn table(rows: &[Row]) -> (String, String) {
    let head = ["#", "figure", "value", "floor", "ratio", "target", "met"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.fig.clone(),
                r.name.clone(),
                r.value.clone(),
                r.floor.clone(),
                r.ratio.map_or("-".into(), |x| format!("{x:.2}×")),
                r.target.clone(),
                r.met_text().to_string(),
            ]
        })
        .collect();
    let mut w = head.map(|h| h.chars().count());
    for c in &cells {
        for i in 0..7 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |c: &[String]| -> String {
        let mut s = String::new();
        for i in 0..7 {
            let pad = w[i] - c[i].chars().count();
            s.push_str(&c[i]);
            s.push_str(&" ".repeat(pad));
            s.push_str(if i < 6 { "  " } else { "" });
        }
        s.trim_end().to_string()
    };
    let mut text = line(&head.map(String::from));
    text.push('\n');
    text.push_str(&"-".repeat(w.iter().sum::<usize>() + 12));
    text.push('\n');
    for c in &cells {
        text.push_str(&line(c));
        text.push('\n');
    }
    let mut md = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(7));
    for c in &cells {
        let esc: Vec<String> = c.iter().map(|x| x.replace('|', "\\|")).collect();
        let mut row = esc.clone();
        if row[6] == "NO" {
            row[6] = "**NO**".into();
        }
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    (text, md)
}

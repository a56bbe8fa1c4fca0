//! Purposes of use, after the GA4GH Data Use Ontology (DUO): what a scene
//! declares and a consent grant covers (see the table in `consent`). Part
//! of the policy model; consent receipts and the policy file both use it.

/// A DUO primary purpose.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// DUO:0000042 general research use.
    Gru,
    /// DUO:0000006 health/medical/biomedical research.
    Hmb,
    /// DUO:0000007 disease-specific research, with an ICD-10 code.
    Disease(String),
}

impl Purpose {
    /// Parse `GRU`, `HMB`, `DS:<ICD-10>` or the DUO identifiers (DS then
    /// takes its code from `disease`).
    pub fn parse(code: &str, disease: Option<&str>) -> Result<Purpose, String> {
        let code = code.trim();
        let ds = |d: &str| {
            let d = d.trim().to_ascii_uppercase();
            if icd10(&d) {
                Ok(Purpose::Disease(d))
            } else {
                Err(format!("{d:?} is not an ICD-10 code such as E11 or E11.9"))
            }
        };
        match (code.to_ascii_uppercase().as_str(), disease) {
            ("GRU" | "DUO:0000042", None) => Ok(Purpose::Gru),
            ("HMB" | "DUO:0000006", None) => Ok(Purpose::Hmb),
            ("DS" | "DUO:0000007", Some(d)) => ds(d),
            ("DS" | "DUO:0000007", None) => {
                Err("disease-specific research (DS) needs a disease code".into())
            }
            (c, None) if c.starts_with("DS:") => ds(&c[3..]),
            (_, Some(_)) => Err("only DS (DUO:0000007) takes a disease code".into()),
            _ => Err(format!(
                "{code:?}: expected GRU, HMB or DS:<ICD-10> (or DUO:0000042, DUO:0000006, DUO:0000007)"
            )),
        }
    }

    /// The short code: `GRU`, `HMB` or `DS:E11`.
    pub fn code(&self) -> String {
        match self {
            Purpose::Gru => "GRU".into(),
            Purpose::Hmb => "HMB".into(),
            Purpose::Disease(d) => format!("DS:{d}"),
        }
    }

    /// Does a grant for `self` cover use for `scene`'s purpose?
    pub fn covers(&self, scene: &Purpose) -> bool {
        match (self, scene) {
            (Purpose::Gru, _) => true,
            (Purpose::Hmb, Purpose::Hmb | Purpose::Disease(_)) => true,
            (Purpose::Disease(g), Purpose::Disease(s)) => {
                s == g
                    || s.strip_prefix(g.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            }
            _ => false,
        }
    }
}

/// `A00`–`Z99`, optionally `.` and one or two more characters.
fn icd10(d: &str) -> bool {
    let b = d.as_bytes();
    let head = b.len() >= 3
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && b[2].is_ascii_alphanumeric();
    head && match &b[3..] {
        [] => true,
        [b'.', rest @ ..] => {
            (1..=2).contains(&rest.len()) && rest.iter().all(u8::is_ascii_alphanumeric)
        }
        _ => false,
    }
}

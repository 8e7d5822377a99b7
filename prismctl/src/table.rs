//! Plain text tables for the commands' human-readable output: no borders, columns two
//! spaces apart, widths by display width (so "Müller" or a Japanese name lines up), trailing
//! spaces trimmed.

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, Table};

/// How a column's cells (its header included) line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// The lines of a table with `headers` (name and alignment of each column) over `rows`.
pub fn lines(headers: &[(&str, Align)], rows: &[Vec<String>]) -> Vec<String> {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .force_no_tty()
        .set_header(headers.iter().map(|(name, _)| *name));
    for row in rows {
        table.add_row(row);
    }
    let last = headers.len().saturating_sub(1);
    for (i, (_, align)) in headers.iter().enumerate() {
        if let Some(column) = table.column_mut(i) {
            // Two spaces after every column but the last; none before.
            column.set_padding((0, if i < last { 2 } else { 0 }));
            column.set_cell_alignment(match align {
                Align::Left => CellAlignment::Left,
                Align::Right => CellAlignment::Right,
            });
        }
    }
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_display_width_two_spaces_apart() {
        let lines = lines(
            &[
                ("NAME", Align::Left),
                ("N", Align::Right),
                ("CITY", Align::Left),
            ],
            &[
                vec!["Müller".into(), "7".into(), "Köln".into()],
                vec!["Li".into(), "1234".into(), "".into()],
                vec!["山田".into(), "5".into(), "東京".into()],
            ],
        );
        assert_eq!(
            lines,
            vec![
                "NAME       N  CITY",
                "Müller     7  Köln",
                "Li      1234",
                "山田       5  東京",
            ]
        );
    }
}

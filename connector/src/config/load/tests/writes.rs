//! `[[write]]` and `[[method]]`.

use super::*;

#[test]
fn write_to_missing_plc_lists_the_plcs() {
    let text = format!(
            "{MINIMAL}\n[[write]]\nproperty = \"p\"\nplc = \"capper\"\nnode = \"ns=2;i=1\"\ntype = \"Double\"\n"
        );
    assert_problem(
        &text,
        16,
        "write[0].plc",
        "no plc \"capper\" in this file (plcs: filler)",
    );
}

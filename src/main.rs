//! The `itera` command line: parses flags and hands off to `cli`.

fn main() {
    println!("itera");
}

//! Prints the connection strategy table as markdown:
//! `cargo run --release -p macula_nat_proto --example strategy_table > bench/strategy_table.md`

fn main() {
    print!("{}", macula_nat_proto::strategy::render_table());
}

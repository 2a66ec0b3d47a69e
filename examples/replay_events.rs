//! Lists the events of a replay log (a debugging aid).
fn main() {
    let path = std::env::args().nth(1).expect("a replay log");
    let bytes = std::fs::read(&path).expect("readable");
    match ox86::replay::parse(&bytes) {
        Ok((h, events)) => {
            println!("{h:?}");
            for e in events {
                match e {
                    ox86::replay::Event::Check(c) => println!("check at {}", c.icount),
                    e => println!("{e:?}"),
                }
            }
        }
        Err(e) => println!("{e}"),
    }
}

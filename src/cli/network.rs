//! `network init`, `site add` and `init --join` (issue 14, art 6.2): what each prints.

use std::path::Path;
use std::process::ExitCode;

use crate::site::config::Config;
use crate::site::init::InitOptions;
use crate::site::network::{self, NetworkInitOptions, SiteAddOptions};

/// `network init`: the network and its first site.
pub fn init(o: &NetworkInitOptions) -> anyhow::Result<ExitCode> {
    let p = network::network_init(o)?;
    let dir = &o.site.dir;
    println!(
        "network {} created at its home: {}",
        o.network,
        dir.display()
    );
    println!(
        "regional terminal CA: {} (its key {} never leaves this machine)",
        dir.join(network::CA_CERT).display(),
        dir.join(network::CA_KEY).display()
    );
    println!("site list: {}", dir.join(network::NETWORK_FILE).display());
    println!("site {} config: {}", o.site.site, p.display());
    println!(
        "next: seibo-gate site add --config {} --site SITE --name NAME --host HOST --out DIR",
        p.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `site add`: the bundle for another site.
pub fn add(home: &Config, o: &SiteAddOptions) -> anyhow::Result<ExitCode> {
    let added = network::add_site(home, o)?;
    println!(
        "site {} added to the network; its bundle: {}",
        added.site.id,
        added.bundle.display()
    );
    println!(
        "the bundle holds the site's private keys: carry it to the site like a terminal's .p12 \
         (encrypted medium or in person), then shred it here"
    );
    println!(
        "at {}: seibo-gate init --join BUNDLE --dir /etc/seibo-gate --listen ADDR:PORT \
         --upstream http://EMR --private CIDR",
        added.site.id
    );
    println!(
        "{} now lists {} under [[network.sites]]; add the same block to every other site's gate.toml:",
        home.path.display(),
        added.site.id
    );
    print!("{}", network::site_block(&added.site));
    Ok(ExitCode::SUCCESS)
}

/// `network etcd-member`: a member's certificate from the network's etcd CA.
pub fn etcd_member(
    home: &Config,
    name: &str,
    hosts: &[String],
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let f = network::etcd::issue_member(home, name, hosts, out)?;
    println!(
        "etcd member {name}: {} and {}",
        f.cert.display(),
        f.key.display()
    );
    println!(
        "etcd flags: --cert-file {c} --key-file {k} --peer-cert-file {c} --peer-key-file {k} \
         --client-cert-auth --trusted-ca-file {ca} --peer-client-cert-auth --peer-trusted-ca-file {ca}",
        c = f.cert.display(),
        k = f.key.display(),
        ca = f.ca.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `init --join BUNDLE`: a site from its bundle.
pub fn join(bundle: &Path, o: &InitOptions) -> anyhow::Result<ExitCode> {
    let p = network::join(bundle, o)?;
    println!("site joined the network: {}", p.display());
    println!(
        "next: seibo-gate check-config --config {} && seibo-gate serve --config {}",
        p.display(),
        p.display()
    );
    Ok(ExitCode::SUCCESS)
}

#!/bin/sh
# Writes regmirror(1) to stdout from the README's "Command line" section: its first code
# block is the synopsis, the rest the description. Usage: manpage.sh README.md VERSION
set -e
readme=$1
version=$2
cat <<HEAD
.TH REGMIRROR 1 "" "regmirror $version" "User Commands"
.SH NAME
regmirror \\- pull-through caching mirror for Docker Hub and other registries
HEAD
awk '
function esc(s) {
    gsub(/\\/, "\\e", s)
    gsub(/`/, "", s)
    if (s ~ /^[.\047]/) s = "\\&" s
    return s
}
/^## / { on = ($0 == "## Command line"); next }
!on { next }
/^```/ {
    if (!code) {
        code = 1; blocks++
        print (blocks == 1 ? ".SH SYNOPSIS" : ".PP\n.RS 4") "\n.nf"
    } else {
        code = 0
        print ".fi" (blocks == 1 ? "\n.SH DESCRIPTION" : "\n.RE")
    }
    next
}
code { print esc($0); next }
/^$/ { para = 1; next }
{ if (para) { print ".PP"; para = 0 } print esc($0) }
' "$readme"
cat <<'TAIL'
.SH FILES
.TP
.I /etc/regmirror/config.yml
the configuration the packaged service serves (registry:2's format)
.TP
.I /var/lib/regmirror
the storage root: the stored and mirrored images
.SH SEE ALSO
.BR systemctl (1);
the README of regmirror for the whole configuration and the client setup.
TAIL

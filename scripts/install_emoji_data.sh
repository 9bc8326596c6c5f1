#!/usr/bin/env bash
# Install the sources of the `emoji` data set (see docs/data-emoji.md) into one directory that kuosan reads:
#   ${KUOSAN_EMOJI_SOURCES:-${KUOSAN_CACHE:-$HOME/.cache/kuosan}/data/emoji-sources}/<package>-<version>/
# Pinned versions; only the files the loader needs are kept (the 64 px PNGs and emoji.json of each
# emoji-datasource tarball, the 256 px WebPs of fluent-emoji-3d, OpenMoji's colour SVGs rasterised to
# 128 px PNGs, the PNGs of ruby-gemojione's .deb), each with its licence notice. Idempotent: a package
# whose directory holds .complete is skipped. Quiet; a source it cannot install gets one note, and it
# always exits 0 (kuosan then uses the sources that are there, or says how to install them).
# Needs npm for the npm packages, apt-get + dpkg-deb for gemojione, rsvg-convert (librsvg2-bin, installed
# when root with apt-get) for OpenMoji. npm gets a throwaway cache, so ~/.npm stays as it was.
# Nothing is downloaded at run time.
set -uo pipefail

DEST="${KUOSAN_EMOJI_SOURCES:-${KUOSAN_CACHE:-$HOME/.cache/kuosan}/data/emoji-sources}"
TWITTER=emoji-datasource-twitter@16.0.0
GOOGLE=emoji-datasource-google@16.0.0
FLUENT=@lobehub/fluent-emoji-3d@1.1.0
OPENMOJI=openmoji@17.0.0
GEMOJIONE=ruby-gemojione=3.3.0-1
GEMOJIONE_GEM=usr/share/rubygems-integration/all/gems/gemojione-3.3.0

note() { echo "note: $*" >&2; }
mkdir -p "$DEST" || { note "cannot create $DEST; the emoji data set is not installed"; exit 0; }
WORK="$(mktemp -d "$DEST/.install.XXXXXX")" || exit 0
trap 'rm -rf "$WORK"' EXIT
is_root() { [ "$(id -u)" = 0 ]; }

# done DIR: is DIR already installed?  finish DIR TMP: move the finished TMP into place atomically.
done_already() { [ -f "$DEST/$1/.complete" ]; }
finish() { touch "$2/.complete" && rm -rf "${DEST:?}/$1" && mv "$2" "$DEST/$1"; }

# npm_tarball NAME@VERSION: fetch the package's tarball into $WORK (no install, no scripts); prints its path.
npm_tarball() {
  command -v npm >/dev/null || return 1
  (cd "$WORK" && npm pack --silent --ignore-scripts --cache "$WORK/.npm-cache" "$1" 2>/dev/null) | tail -1 | sed "s#^#$WORK/#"
}

# npm_source DIR SPEC MEMBER...: extract MEMBER... (paths inside the tarball's package/) into $DEST/DIR.
npm_source() {
  local dir=$1 spec=$2; shift 2
  done_already "$dir" && return 0
  if ! command -v npm >/dev/null; then
    note "npm not found: skipping $spec (install Node.js and npm, then rerun $0)"; return 0
  fi
  local tgz out="$WORK/$dir"
  tgz="$(npm_tarball "$spec")"
  if [ -z "$tgz" ] || [ ! -f "$tgz" ]; then
    note "npm pack $spec failed (no access to the npm registry?); skipping it"; return 0
  fi
  mkdir -p "$out"
  local members=()
  for m in "$@"; do members+=("package/$m"); done
  if ! tar -xzf "$tgz" -C "$out" --strip-components=1 --wildcards "${members[@]}" 2>/dev/null; then
    note "$spec: its tarball lacks some of $*; skipping it"; rm -rf "$out" "$tgz"; return 0
  fi
  rm -f "$tgz"
  echo "$spec" > "$out/SOURCE"
  finish "$dir" "$out"
}

npm_source emoji-datasource-twitter-16.0.0 "$TWITTER" emoji.json LICENSE README.md 'img/twitter/64/*.png'
npm_source emoji-datasource-google-16.0.0 "$GOOGLE" emoji.json LICENSE README.md 'img/google/64/*.png'
npm_source fluent-emoji-3d-1.1.0 "$FLUENT" package.json README.md 'assets/*.webp'

# OpenMoji ships SVGs only: rasterise the colour ones at 128 px with rsvg-convert, here, once.
install_openmoji() {
  local dir=openmoji-17.0.0
  done_already "$dir" && return 0
  if ! command -v rsvg-convert >/dev/null && command -v apt-get >/dev/null && is_root; then
    apt-get install -y -q librsvg2-bin >/dev/null 2>&1 || \
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q librsvg2-bin >/dev/null 2>&1; }
  fi
  if ! command -v rsvg-convert >/dev/null; then
    note "rsvg-convert not found: skipping $OPENMOJI (apt-get install librsvg2-bin, then rerun $0)"; return 0
  fi
  local stage="$WORK/openmoji-svg" out="$WORK/$dir"
  mkdir -p "$stage"
  local tgz
  if ! command -v npm >/dev/null; then note "npm not found: skipping $OPENMOJI"; return 0; fi
  tgz="$(npm_tarball "$OPENMOJI")"
  if [ -z "$tgz" ] || ! tar -xzf "$tgz" -C "$stage" --strip-components=1 --wildcards \
       'package/color/svg/*.svg' package/CITATION.cff 2>/dev/null; then
    note "npm pack $OPENMOJI failed; skipping it"; return 0
  fi
  rm -f "$tgz"
  mkdir -p "$out/png128"
  # Skip OpenMoji's own extras (private-use code points E000-F8FF) and the skin-tone variants.
  (cd "$stage/color/svg" && ls | grep -v -E '^[EF][0-9A-F]{3}' | grep -v -E '1F3F[B-F]' |
    xargs -P "$(nproc 2>/dev/null || echo 2)" -I{} sh -c \
      'rsvg-convert -w 128 -h 128 "$1" -o "$2/$(basename "$1" .svg).png" 2>/dev/null || true' _ {} "$out/png128")
  cp "$stage/CITATION.cff" "$out/"
  echo "$OPENMOJI (color/svg rasterised at 128 px by rsvg-convert)" > "$out/SOURCE"
  finish "$dir" "$out"
}
install_openmoji

# gemojione: the Debian package's PNGs and index, without installing it (it would pull in Ruby).
install_gemojione() {
  local dir=gemojione-3.3.0
  done_already "$dir" && return 0
  if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    note "apt-get/dpkg-deb not found: skipping $GEMOJIONE (a Debian-based system has them)"; return 0
  fi
  local deb out="$WORK/$dir" unpacked="$WORK/deb"
  (cd "$WORK" && { apt-get download -q "$GEMOJIONE" >/dev/null 2>&1 || \
    { is_root && apt-get update -q >/dev/null 2>&1 && apt-get download -q "$GEMOJIONE" >/dev/null 2>&1; }; })
  deb="$(ls "$WORK"/ruby-gemojione_*.deb 2>/dev/null | head -1)"
  if [ -z "$deb" ]; then note "apt-get download $GEMOJIONE failed; skipping it"; return 0; fi
  mkdir -p "$unpacked" "$out"
  dpkg-deb -x "$deb" "$unpacked" || { note "$deb would not unpack; skipping it"; return 0; }
  mv "$unpacked/$GEMOJIONE_GEM/assets/png" "$out/png" && mkdir -p "$out/config" &&
    mv "$unpacked/$GEMOJIONE_GEM/config/index.json" "$out/config/" &&
    cp "$unpacked/usr/share/doc/ruby-gemojione/copyright" "$out/copyright" || {
      note "$deb lacks the expected files; skipping it"; return 0; }
  rm -rf "$unpacked" "$deb"
  echo "Debian $GEMOJIONE" > "$out/SOURCE"
  finish "$dir" "$out"
}
install_gemojione

# The font the older `emoji:noto` set renders (a system package: only as root with apt-get).
if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] && command -v apt-get >/dev/null && is_root; then
  apt-get install -y -q fonts-noto-color-emoji >/dev/null 2>&1 || \
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-noto-color-emoji >/dev/null 2>&1; } || \
    note "could not install fonts-noto-color-emoji; emoji:noto needs it"
fi
exit 0

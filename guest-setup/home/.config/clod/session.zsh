# clod session setup. Sourced by ~/.zprofile in every login shell (zsh reads .zprofile for
# `zsh -l -c ...` too). The host starts each session with
#
#   exec env CLOD_PROJECT=<name> CLOD_SUBDIR=<rel> CLOD_SHARES=<a/b/c> LANG=.. \
#       zsh -l -c 'exec "$@"' clod <argv...>
#
# and this file turns that environment into a working directory:
#   - ~/projects/<name> -> $CLOD_SHARES_ROOT/<name> for every name in CLOD_SHARES ('/'-separated;
#     names never contain '/', ':', newline or NUL and never start with '.');
#   - cd ~/projects/$CLOD_PROJECT/$CLOD_SUBDIR (project root, with a note, if the subdirectory is
#     missing; exit 1 with an error if the project itself is missing).
# Only stderr is used: a session's stdout belongs to the command it runs.
#
# Environment: CLOD_SHARES_ROOT overrides the share root (macOS/Tart: "/Volumes/My Shared Files",
# Debian/QEMU: /mnt/clod). CLOD_SHARES_WAIT bounds the wait, in seconds, for the shares to be
# mounted right after boot (default 10). CLOD_SESSION_READY is exported once set up, so nested
# login shells (`clod shell` runs `zsh -l`) keep the directory the user is in.

_clod_say() { print -r -u2 -- "clod: $*" }

_clod_shares_root() {
  if [[ -n ${CLOD_SHARES_ROOT-} ]]; then
    REPLY=$CLOD_SHARES_ROOT
  elif [[ $OSTYPE == darwin* ]]; then
    REPLY='/Volumes/My Shared Files'
  else
    REPLY=/mnt/clod
  fi
}

# Target of a symlink, without forking where zsh/stat is available.
_clod_link_target() {
  local -a target
  if zmodload -F zsh/stat b:zstat 2>/dev/null; then
    zstat -A target -L +link -- $1 2>/dev/null && { REPLY=$target[1]; return 0 }
    return 1
  fi
  REPLY=$(command readlink -- $1) || return 1
}

# A link is clod's if it points into a share root: the current one or either guest's default.
_clod_owns_target() {
  local root=$1 target=$2
  [[ $target == $root/* || $target == '/Volumes/My Shared Files/'* || $target == /mnt/clod/* ]]
}

_clod_valid_name() {
  [[ -n $1 && $1 != .* && $1 != */* && $1 != *:* && $1 != *$'\n'* ]]
}

# Right after boot the shares may not be mounted yet: wait (bounded) until any mapped name shows up.
_clod_wait_for_shares() {
  local root=$1; shift
  local -i tries=$(( ${CLOD_SHARES_WAIT:-10} * 5 ))
  local name
  while (( tries-- > 0 )); do
    for name in "$@"; do
      [[ -e $root/$name ]] && return 0
    done
    if zmodload zsh/zselect 2>/dev/null; then
      zselect -t 20 2>/dev/null
    else
      command sleep 0.2
    fi
  done
  return 0
}

_clod_link_projects() {
  local root=$1 projects=$2; shift 2
  local name link target
  local -a mapped
  mapped=( "$@" )
  if ! command mkdir -p -- $projects; then
    _clod_say "cannot create $projects"
    return 1
  fi
  for name in "$@"; do
    link=$projects/$name
    target=$root/$name
    if [[ -L $link ]]; then
      _clod_link_target $link && [[ $REPLY == $target ]] && continue
      if ! _clod_owns_target $root $REPLY; then
        _clod_say "~/projects/$name is a symlink clod did not make (-> $REPLY); leaving it alone"
        continue
      fi
      command rm -f -- $link
    elif [[ -e $link ]]; then
      _clod_say "~/projects/$name exists and is not clod's link; leaving it alone"
      continue
    fi
    # Another session may create the same link at the same moment; that is success too.
    if ! command ln -s -- $target $link 2>/dev/null; then
      _clod_link_target $link && [[ $REPLY == $target ]] ||
        _clod_say "cannot create the link ~/projects/$name -> $target"
    fi
  done
  # Drop dangling links clod made for projects that are no longer mapped; nothing else.
  for link in $projects/*(N@); do
    name=${link:t}
    (( ${mapped[(Ie)$name]} )) && continue
    [[ -e $link ]] && continue
    _clod_link_target $link && _clod_owns_target $root $REPLY && command rm -f -- $link
  done
  return 0
}

# git < 2.46 (Debian 12, Apple's git) matches safe.directory only by exact physical path, so
# trust each mapped project's root as it appears under the share root. configure-home.sh adds
# "<share root>/*" as well, which git >= 2.46 matches for every repository below it.
_clod_trust_projects() {
  local root=$1; shift
  (( $+commands[git] )) || return 0
  local -a trusted
  trusted=( ${(f)"$(command git config --global --get-all safe.directory 2>/dev/null)"} )
  local name
  for name in "$@"; do
    [[ -d $root/$name ]] || continue
    (( ${trusted[(Ie)$root/$name]} )) && continue
    # A concurrent session may hold the config lock; the next session retries.
    command git config --global --add safe.directory "$root/$name" 2>/dev/null
  done
  return 0
}

clod_session_setup() {
  emulate -L zsh
  local REPLY root projects=$HOME/projects
  _clod_shares_root; root=$REPLY

  local -a names
  local name
  for name in ${(s:/:)CLOD_SHARES-}; do
    if _clod_valid_name $name; then
      names+=( $name )
    else
      _clod_say "ignoring invalid project name ${(q+)name}"
    fi
  done

  if (( $#names )); then
    _clod_wait_for_shares $root $names
    _clod_link_projects $root $projects $names || return 1
    _clod_trust_projects $root $names
  fi

  [[ -n ${CLOD_PROJECT-} ]] || return 0
  local project=$CLOD_PROJECT
  if ! _clod_valid_name $project; then
    _clod_say "invalid project name ${(q+)project}"
    return 1
  fi
  (( ${names[(Ie)$project]} )) || _clod_wait_for_shares $root $project

  # Work through the ~/projects link when it is clod's, so $PWD reads ~/projects/<name>/...;
  # otherwise go to the share itself.
  local base=$projects/$project
  if ! { [[ -L $base ]] && _clod_link_target $base && [[ $REPLY == $root/$project ]] }; then
    base=$root/$project
  fi
  if [[ ! -d $root/$project/ ]]; then
    _clod_say "project '$project' is not available in this VM: $root/$project does not exist."
    _clod_say "Is it mapped? 'clod list' shows the mapped projects; after 'clod add DIR', restart the VM ('clod stop', then 'clod run')."
    return 1
  fi

  local subdir=${CLOD_SUBDIR-} dest=$base
  while [[ $subdir == */ ]]; do subdir=${subdir%/}; done
  while [[ $subdir == ./* ]]; do subdir=${subdir#./}; done
  if [[ -n $subdir && $subdir != . ]]; then
    if [[ $subdir == /* || /$subdir/ == */../* ]]; then
      _clod_say "ignoring subdirectory ${(q+)subdir}: it must be relative and stay inside the project; starting in the project root"
    elif [[ -d $base/$subdir ]]; then
      dest=$base/$subdir
    else
      _clod_say "'$subdir' does not exist in project '$project' in this VM; starting in the project root"
    fi
  fi
  if ! builtin cd -q -- $dest; then
    _clod_say "cannot change to $dest"
    return 1
  fi
  return 0
}

if [[ -z ${CLOD_SESSION_READY-} && ( -n ${CLOD_PROJECT-} || -n ${CLOD_SHARES-} ) ]]; then
  clod_session_setup || exit 1
  export CLOD_SESSION_READY=1
fi

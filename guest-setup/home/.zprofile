# ~/.zprofile: clod guest login shells (zsh reads it for `zsh -l -c ...` as well).
# Set PATH here rather than in .zshenv: on macOS /etc/zprofile runs path_helper, which reorders
# PATH after .zshenv, so only this file can put ~/bin (the agent wrappers) first.

typeset -U path PATH
if [[ -d /opt/homebrew/bin ]]; then
  export HOMEBREW_PREFIX=/opt/homebrew HOMEBREW_NO_ANALYTICS=1 HOMEBREW_NO_ENV_HINTS=1
  path=(/opt/homebrew/bin /opt/homebrew/sbin $path)
fi
[[ -d $HOME/.npm-global/bin ]] && path=($HOME/.npm-global/bin $path)
path=($HOME/bin $HOME/.local/bin $path)
export PATH

# Mapped projects and the session's working directory.
[[ -r $HOME/.config/clod/session.zsh ]] && source $HOME/.config/clod/session.zsh

# Your own additions go in ~/.zprofile.local (see ~/.config/clod/README).
[[ -r $HOME/.zprofile.local ]] && source $HOME/.zprofile.local
true

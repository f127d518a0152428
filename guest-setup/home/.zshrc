# ~/.zshrc: interactive clod guest shells only (`clod shell`). Kept small on purpose.

HISTFILE=$HOME/.zsh_history
HISTSIZE=10000
SAVEHIST=10000
setopt share_history hist_ignore_dups hist_ignore_space interactive_comments

# Completion, including Homebrew's zsh-completions on macOS.
if [[ -d /opt/homebrew/share/zsh-completions ]]; then
  fpath=(/opt/homebrew/share/zsh-completions $fpath)
fi
autoload -Uz compinit
command mkdir -p $HOME/.cache
compinit -i -d $HOME/.cache/zcompdump

# Prompt: "clod user@host ~/projects/app/src (main) %", the exit status when non-zero.
autoload -Uz vcs_info
zstyle ':vcs_info:*' enable git
zstyle ':vcs_info:git:*' formats ' (%b)'
zstyle ':vcs_info:git:*' actionformats ' (%b|%a)'
precmd() { vcs_info }
setopt prompt_subst
if [[ -n ${NO_COLOR-} ]]; then
  PROMPT='clod %n@%m %~${vcs_info_msg_0_}%(?.. [%?]) %# '
else
  PROMPT='%F{magenta}clod%f %F{green}%n@%m%f %F{blue}%~%f%F{yellow}${vcs_info_msg_0_}%f%(?.. %F{red}[%?]%f) %# '
fi

bindkey -e
alias ll='ls -lA'

# Your own additions go in ~/.zshrc.local (see ~/.config/clod/README).
[[ -r $HOME/.zshrc.local ]] && source $HOME/.zshrc.local
true

#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by recipe scripts: every "--name value" (or
# "--name=value") sets the shell variable "name" (dashes become underscores), which the script
# must have defined beforehand. "--help" prints the script's header comment and the defaults.
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
      echo "Options (current values):"
      for _v in ${_speechkit_opts:-}; do echo "  --${_v} ${!_v}"; done
      exit 0 ;;
    --*=*) _name=${1%%=*}; _name=${_name#--}; _value=${1#*=}; shift ;;
    --*) _name=${1#--}; [ $# -ge 2 ] || { echo "$0: option --$_name needs a value" >&2; exit 2; }; _value=$2; shift 2 ;;
    *) break ;;
  esac
  _name=${_name//-/_}
  if [ -z "${!_name+x}" ]; then echo "$0: unknown option --$_name (see --help)" >&2; exit 2; fi
  printf -v "$_name" '%s' "$_value"
done

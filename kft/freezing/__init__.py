"""What trains, and when: layer groups, selectors, freeze/unfreeze, gradual unfreezing."""

from kft.freezing.freeze import FreezeResult
from kft.freezing.freeze import freeze
from kft.freezing.freeze import unfreeze
from kft.freezing.gradual import GradualUnfreezing
from kft.freezing.groups import LayerGroup
from kft.freezing.groups import layer_groups
from kft.freezing.prepare import prepare_optimizer
from kft.freezing.select import Adapters
from kft.freezing.select import All
from kft.freezing.select import Biases
from kft.freezing.select import Head
from kft.freezing.select import LastGroups
from kft.freezing.select import Name
from kft.freezing.select import Norms
from kft.freezing.select import Selector
from kft.freezing.select import TopLayers
from kft.freezing.select import Type
from kft.freezing.select import Where
from kft.freezing.select import parse_selector
